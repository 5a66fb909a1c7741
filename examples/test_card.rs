//! A synthetic 224x224 test card: an input whose content is known exactly, so a learner can tell
//! what each layer responds to (an orientation, a colour, a ring) without a photo.
//!
//! ```text
//! cargo run --release --example test_card -- card.png
//! ```
//!
//! Four quadrants: vertical stripes (top left), diagonal stripes (top right), concentric rings
//! (bottom left), and red, green, blue and yellow squares (bottom right). docs/tour.md draws the
//! activation maps of VGG16's layers for it.

use image::{Rgb, RgbImage};

/// The side of the card: Keras's VGG input size, so no resizing blurs the edges.
const SIDE: u32 = 224;
const HALF: u32 = SIDE / 2;

/// The pixel of the card at (x, y).
fn card_pixel(x: u32, y: u32) -> Rgb<u8> {
    const WHITE: Rgb<u8> = Rgb([240, 240, 240]);
    const BLACK: Rgb<u8> = Rgb([16, 16, 16]);
    let bw = |on: bool| if on { WHITE } else { BLACK };
    match (x < HALF, y < HALF) {
        // Vertical stripes, 8 pixels per period: edges of one orientation only.
        (true, true) => bw(x % 8 < 4),
        // Stripes at 45 degrees, 12 pixels per period along x + y.
        (false, true) => bw((x + y) % 12 < 6),
        // Concentric rings: every orientation of edge at once, at one spatial frequency.
        (true, false) => {
            let (dx, dy) = (x as f64 - 56.0, y as f64 - 168.0);
            bw(((dx.hypot(dy) / 5.0) as u32).is_multiple_of(2))
        }
        // Four flat colours, which only colour-opponent filters tell apart.
        (false, false) => {
            let colours = [
                Rgb([220, 30, 30]),
                Rgb([30, 180, 40]),
                Rgb([30, 60, 220]),
                Rgb([235, 210, 30]),
            ];
            let i = usize::from(x >= HALF + HALF / 2) + 2 * usize::from(y >= HALF + HALF / 2);
            colours[i]
        }
    }
}

fn main() -> anyhow::Result<()> {
    let out = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: test_card OUT.png"))?;
    let card = RgbImage::from_fn(SIDE, SIDE, card_pixel);
    let mut png = std::io::Cursor::new(Vec::new());
    card.write_to(&mut png, image::ImageFormat::Png)?;
    keel::io::atomic::write_atomic(std::path::Path::new(&out), |w| {
        std::io::Write::write_all(w, png.get_ref())
    })?;
    println!("wrote {out}: {SIDE}x{SIDE} test card");
    Ok(())
}
