import SwiftUI

/// A square drawing surface: drag to draw strokes. The strokes are kept in view coordinates of a
/// 260-point square so the rendered sketch matches what was drawn.
struct SketchCanvas: View {
    @Binding var strokes: [[CGPoint]]
    @State private var drawing = false

    var body: some View {
        SketchDrawing(strokes: strokes)
            .frame(width: 260, height: 260)
            .overlay(RoundedRectangle(cornerRadius: 4).stroke(.secondary))
            .contentShape(Rectangle())
            .gesture(
                DragGesture(minimumDistance: 0)
                    .onChanged { value in
                        if drawing, !strokes.isEmpty {
                            strokes[strokes.count - 1].append(value.location)
                        } else {
                            strokes.append([value.location])
                            drawing = true
                        }
                    }
                    .onEnded { _ in drawing = false }
            )
            .frame(maxWidth: .infinity)
    }
}

/// The strokes themselves: black, round, on white (what `SketchCleaner` expects, either polarity works).
struct SketchDrawing: View {
    let strokes: [[CGPoint]]

    var body: some View {
        Canvas { context, size in
            context.fill(Path(CGRect(origin: .zero, size: size)), with: .color(.white))
            for stroke in strokes {
                var path = Path()
                if stroke.count == 1, let p = stroke.first {
                    path.addEllipse(in: CGRect(x: p.x - 2, y: p.y - 2, width: 4, height: 4))
                } else {
                    path.addLines(stroke)
                }
                context.stroke(path, with: .color(.black), style: StrokeStyle(lineWidth: 5, lineCap: .round, lineJoin: .round))
            }
        }
    }
}
