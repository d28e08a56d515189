import Foundation

/// One readable sentence for any error, for the app's alert and the command line.
///
/// PocketSD's own errors already are one sentence with the thing to do. Errors from the system (Core ML, the file
/// system) arrive as NSErrors whose description can run to several lines with internal detail; the first line is
/// kept and prefixed with what the app was doing.
public enum ReadableError {
    public static func sentence(_ error: Error) -> String {
        if let own = error as? PocketSDError { return finish(own.description) }
        if error is CancellationError { return "Stopped." }
        let ns = error as NSError
        let detail = firstLine(ns.localizedDescription)
        if ns.domain == "com.apple.CoreML" {
            return finish("Core ML could not load or run a model: \(detail)")
        }
        if ns.domain == NSCocoaErrorDomain {
            let file = (ns.userInfo[NSFilePathErrorKey] as? String).map { " (\(($0 as NSString).lastPathComponent))" } ?? ""
            switch ns.code {
            case NSFileReadNoSuchFileError, NSFileNoSuchFileError:
                return finish("A file of the bundle is missing\(file); copy the whole bundle folder again")
            case NSFileReadNoPermissionError, NSFileWriteNoPermissionError:
                return finish("The app may not read that folder\(file); choose it again with Choose bundle folder…")
            case NSFileWriteOutOfSpaceError:
                return finish("The device is out of storage\(file); free some space and try again")
            default:
                break
            }
        }
        return finish(detail.isEmpty ? String(describing: error) : detail)
    }

    static func firstLine(_ text: String) -> String {
        text.split(whereSeparator: \.isNewline).first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
    }

    /// Capital first letter, one line, a full stop at the end.
    static func finish(_ text: String) -> String {
        var line = firstLine(text)
        guard let first = line.first else { return "Something went wrong." }
        line = first.uppercased() + line.dropFirst()
        if let last = line.last, !".!?".contains(last) { line += "." }
        return line
    }
}
