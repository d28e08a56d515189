import SwiftUI

/// A drawing surface with the bundle's aspect: drag to draw strokes, over white paper or over a photo (to paint a
/// repaint mask). The strokes are kept in view coordinates of `size` so the rendered image matches what was drawn,
/// and the photo is shown center-cropped to that aspect, as the run crops it, so a painted mask lands where it was
/// painted.
///
/// It sits inside a scrolling form. A plain drag gesture loses to the form's scrolling; this one is high priority
/// inside the square, and `isDrawing` lets the form turn its scrolling off while the finger is down.
struct SketchCanvas: View {
    static let side: CGFloat = 260

    /// `side` wide, with the bundle's aspect.
    static func size(imageWidth: Int, imageHeight: Int) -> CGSize {
        CGSize(width: side, height: (side * CGFloat(imageHeight) / CGFloat(max(imageWidth, 1))).rounded())
    }

    @Binding var strokes: [[CGPoint]]
    @Binding var isDrawing: Bool
    var size = CGSize(width: SketchCanvas.side, height: SketchCanvas.side)
    var background: CGImage?
    var lineWidth: CGFloat = 5

    var body: some View {
        ZStack {
            if let background {
                Image(decorative: background, scale: 1).resizable().scaledToFill()
                    .frame(width: size.width, height: size.height).clipped()
            }
            SketchDrawing(strokes: strokes, lineWidth: lineWidth, asMask: false, overPhoto: background != nil)
        }
        .frame(width: size.width, height: size.height)
        .overlay(RoundedRectangle(cornerRadius: 4).stroke(.secondary))
        .contentShape(Rectangle())
        .highPriorityGesture(
            DragGesture(minimumDistance: 0, coordinateSpace: .local)
                .onChanged { value in
                    let point = CGPoint(x: min(max(value.location.x, 0), size.width), y: min(max(value.location.y, 0), size.height))
                    if isDrawing, !strokes.isEmpty {
                        strokes[strokes.count - 1].append(point)
                    } else {
                        strokes.append([point])
                        isDrawing = true
                    }
                }
                .onEnded { _ in isDrawing = false }
        )
        .frame(maxWidth: .infinity)
    }
}

/// The strokes themselves. A sketch: black, round, on white (what `SketchCleaner` expects, either polarity works).
/// A mask: white strokes on black (white = repaint). Over a photo, the strokes show translucent.
struct SketchDrawing: View {
    let strokes: [[CGPoint]]
    var lineWidth: CGFloat = 5
    var asMask = false
    var overPhoto = false

    var body: some View {
        Canvas { context, size in
            if !overPhoto {
                context.fill(Path(CGRect(origin: .zero, size: size)), with: .color(asMask ? .black : .white))
            }
            let ink: Color = asMask ? .white : (overPhoto ? Color.red.opacity(0.5) : .black)
            for stroke in strokes {
                var path = Path()
                if stroke.count == 1, let p = stroke.first {
                    path.addEllipse(in: CGRect(x: p.x - lineWidth / 2, y: p.y - lineWidth / 2, width: lineWidth, height: lineWidth))
                    context.fill(path, with: .color(ink))
                } else {
                    path.addLines(stroke)
                    context.stroke(path, with: .color(ink), style: StrokeStyle(lineWidth: lineWidth, lineCap: .round, lineJoin: .round))
                }
            }
        }
    }
}
