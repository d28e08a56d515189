// Stand-in for Apple's CoreGraphics, only for type-checking PocketSDKit's engine on Linux (scripts/typecheck-engine.sh).
// Declares just the API surface the engine uses, signatures modelled on the real SDK / package; no behaviour.
@_exported import Foundation
@available(iOS 2.0, macOS 10.0, *)
public final class CGImage {
    public var width: Int { 0 }
    public var height: Int { 0 }
    public init?(width: Int, height: Int, bitsPerComponent: Int, bitsPerPixel: Int, bytesPerRow: Int, space: CGColorSpace, bitmapInfo: CGBitmapInfo, provider: CGDataProvider, decode: UnsafePointer<CGFloat>?, shouldInterpolate: Bool, intent: CGColorRenderingIntent) { nil }
    @available(iOS 2.0, macOS 10.4, *)
    public func cropping(to rect: CGRect) -> CGImage? { nil }
}
@available(iOS 2.0, macOS 10.0, *)
public final class CGColorSpace {
    @available(iOS 9.0, macOS 10.5, *)
    public static var sRGB: CFString { "sRGB" as CFString }
    public init?(name: CFString) { nil }
}
@available(iOS 2.0, macOS 10.0, *)
public func CGColorSpaceCreateDeviceRGB() -> CGColorSpace { fatalError() }
@available(iOS 2.0, macOS 10.0, *)
public func CGColorSpaceCreateDeviceGray() -> CGColorSpace { fatalError() }
@available(iOS 2.0, macOS 10.3, *)
public final class CGColor { public init(red: CGFloat, green: CGFloat, blue: CGFloat, alpha: CGFloat) {} }
@available(iOS 2.0, macOS 10.0, *)
public enum CGImageAlphaInfo: UInt32 { case none = 0, premultipliedLast, premultipliedFirst, last, first, noneSkipLast, noneSkipFirst, alphaOnly }
@available(iOS 2.0, macOS 10.0, *)
public struct CGBitmapInfo: OptionSet { public let rawValue: UInt32; public init(rawValue: UInt32) { self.rawValue = rawValue } }
@available(iOS 2.0, macOS 10.0, *)
public enum CGColorRenderingIntent: Int32 { case defaultIntent }
@available(iOS 2.0, macOS 10.0, *)
public enum CGInterpolationQuality: Int32 { case `default`, none, low, medium, high }
@available(iOS 2.0, macOS 10.0, *)
public final class CGDataProvider { public init?(data: CFData) { nil } }
@available(iOS 2.0, macOS 10.0, *)
public final class CGContext {
    public init?(data: UnsafeMutableRawPointer?, width: Int, height: Int, bitsPerComponent: Int, bytesPerRow: Int, space: CGColorSpace, bitmapInfo: UInt32) { nil }
    public var interpolationQuality: CGInterpolationQuality = .default
    public func setFillColor(_ color: CGColor) {}
    public func fill(_ rect: CGRect) {}
    public func draw(_ image: CGImage, in rect: CGRect) {}
    public func makeImage() -> CGImage? { nil }
}
public typealias CFData = NSData
public typealias CFMutableData = NSMutableData
public typealias CFString = NSString
public typealias CFURL = NSURL
public typealias CFDictionary = NSDictionary
