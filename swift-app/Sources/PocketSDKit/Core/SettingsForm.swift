import Foundation

/// The app's steps, guidance, scheduler and strength as its form shows them, and which of them the user changed.
///
/// On the command line an unset flag is nil, so a domain preset's steps, guidance and scheduler apply, and the
/// strength follows the start (0.8 an image, 0.65 a sketch, 1.0 a mask). A form always has a value in every
/// field; sending them all would override the preset and the start's strength every time. So the form shows the
/// preset's (or the start's) values, and only the fields the user changed go into the request.
public struct SettingsForm: Equatable, Sendable {
    public enum Field: Hashable, Sendable { case steps, guidance, scheduler, strength }
    /// What the run starts from, for the strength it takes by default (a ControlNet run takes none).
    public enum Start: Sendable { case text, image, sketch, mask }

    public private(set) var steps = ResolvedRequest.defaultSteps
    public private(set) var guidance = ResolvedRequest.defaultGuidance
    public private(set) var scheduler = ResolvedRequest.defaultScheduler
    public private(set) var strength = ResolvedRequest.defaultImageStrength
    public private(set) var edited: Set<Field> = []

    public init() {}

    // The user's changes.
    public mutating func setSteps(_ value: Int) { steps = value; edited.insert(.steps) }
    public mutating func setGuidance(_ value: Double) { guidance = value; edited.insert(.guidance) }
    public mutating func setScheduler(_ value: SchedulerKind) { scheduler = value; edited.insert(.scheduler) }
    public mutating func setStrength(_ value: Double) { strength = value; edited.insert(.strength) }

    /// A domain was picked (nil: none): the form shows what it sets, and earlier changes to those fields are
    /// dropped — picking a preset asks for its values.
    public mutating func show(preset: DomainPreset?) {
        steps = preset?.steps ?? ResolvedRequest.defaultSteps
        guidance = preset?.guidance ?? ResolvedRequest.defaultGuidance
        scheduler = preset.flatMap { try? SchedulerKind.resolve($0.scheduler) } ?? ResolvedRequest.defaultScheduler
        edited.subtract([.steps, .guidance, .scheduler])
    }

    /// The start changed: the form shows its strength unless the user set one.
    public mutating func show(start: Start) {
        guard !edited.contains(.strength) else { return }
        switch start {
        case .text, .image: strength = ResolvedRequest.defaultImageStrength
        case .sketch: strength = ResolvedRequest.defaultSketchStrength
        case .mask: strength = ResolvedRequest.defaultMaskStrength
        }
    }

    /// Puts the changed fields into `request` (strength only when the run starts from an image and has no
    /// ControlNet, where `resolve` would refuse it).
    public func fill(_ request: inout GenerationRequest) {
        if edited.contains(.steps) { request.steps = steps }
        if edited.contains(.guidance) { request.guidance = guidance }
        if edited.contains(.scheduler) { request.scheduler = scheduler.rawValue }
        if edited.contains(.strength), request.controlNet == nil, request.imagePath != nil || request.sketchPath != nil {
            request.strength = strength
        }
    }
}
