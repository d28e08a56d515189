import Foundation

/// Errors the user can act on, mirroring the Python side's `BadInput` / `PlatformUnsupported`:
/// the command line tool prints the message on one line and exits 2; anything else exits 1.
public enum PocketSDError: Error, Equatable, CustomStringConvertible, LocalizedError {
    /// Something the user gave (a flag, a file, a bundle) cannot be used; the message says what to do.
    case badInput(String)
    /// The request is fine but this platform cannot run it (Core ML on Linux, multifunction before iOS 18).
    case platformUnsupported(String)

    public var description: String {
        switch self {
        case .badInput(let message), .platformUnsupported(let message):
            return message
        }
    }

    public var errorDescription: String? { description }

    /// Exit status of the command line tool for this error (the contract: 2 = bad input).
    public var exitCode: Int32 { 2 }
}
