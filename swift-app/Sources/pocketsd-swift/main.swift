// pocketsd-swift: `pocketsd generate` for a Core ML bundle, through Apple's StableDiffusion package (macOS).
// Exit codes as the contract: 0 done, 2 bad input (one line on stderr), 1 anything else.

import Foundation
import PocketSDKit

func printError(_ message: String) {
    FileHandle.standardError.write(Data("pocketsd-swift: \(message)\n".utf8))
}

func loadCatalog(_ file: String?) throws -> DomainCatalog {
    if let file { return try DomainCatalog.load(from: URL(fileURLWithPath: file)) }
    return try DomainCatalog.bundled()
}

func runGenerate(_ options: GenerateOptions) throws {
    let catalog = try loadCatalog(options.domainsFile)
    #if canImport(CoreML) && canImport(StableDiffusion)
    if #available(macOS 14.0, iOS 17.0, *) {
        let outcomes = try CommandLineGeneration.run(options, catalog: catalog) { line in printError(line) }
        for outcome in outcomes {
            print(TextSummaries.describeRun(outcome.report))
            print("wrote \(outcome.imagePath) and \(outcome.reportPath)")
        }
        return
    }
    throw PocketSDError.platformUnsupported("Apple's SDXL pipeline needs macOS 14 or later")
    #else
    // Check everything that can be checked here, so bad input says so before the platform does.
    let (resources, _) = try BundleLayout.inspect(URL(fileURLWithPath: options.resources))  // the layout's own checks
    let manifest = try BundleManifest.load(resources: resources)
    try manifest.checkRunnable()
    _ = try options.request.resolve(catalog: catalog, manifest: manifest)
    throw PocketSDError.platformUnsupported(
        "Core ML needs macOS or iOS; on this machine run the same model with `pocketsd generate PROMPT --backend torch`")
    #endif
}

func main() -> Int32 {
    do {
        switch try CommandLineOptions.parse(Array(CommandLine.arguments.dropFirst())) {
        case .help:
            print(CommandLineOptions.usage)
        case .version:
            print("pocketsd-swift \(PocketSDKitInfo.version)")
        case .domains(let file, let json):
            let catalog = try loadCatalog(file)
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
                print(String(decoding: try encoder.encode(catalog), as: UTF8.self))
            } else {
                print(TextSummaries.describeDomains(catalog))
            }
        case .info(let path):
            print(try TextSummaries.describeBundle(at: URL(fileURLWithPath: path)))
        case .generate(let options):
            try runGenerate(options)
        }
        return 0
    } catch let error as PocketSDError {
        printError(error.description)
        return error.exitCode
    } catch {
        printError(ReadableError.sentence(error))
        return 1
    }
}

exit(main())
