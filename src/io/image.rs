//! Image files to 8-bit RGB, exactly as Keras's `keras.utils.load_img` gives them.
//!
//! Keras loads an image with Pillow: `Image.open`, `convert("RGB")` unless it already is RGB,
//! then `resize((width, height), resample)` if a target size is given and differs. A model
//! is only as accurate as its inputs are faithful to the ones it was evaluated on, so keel
//! follows those three steps sample for sample:
//!
//! - Decoding goes through the `image` crate, the format chosen by the file's first bytes
//!   (never its name), EXIF orientation ignored (Pillow's `open` ignores it too). PNG, GIF,
//!   BMP, TIFF and WebP (lossy too: image-webp follows libwebp) give Pillow's pixels exactly.
//!   JPEG cannot: libjpeg-turbo (Pillow) and zune-jpeg (`image`) round their IDCT and chroma
//!   upsampling differently; see [`JPEG_TOLERANCE`].
//! - Conversion to RGB follows Pillow's `convert("RGB")` per mode; see `to_rgb`.
//! - Resizing is Pillow's own arithmetic, in `super::resize`.
//!
//! Known differences, all rare: CMYK TIFF is off by at most 1 (`image` converts it to RGB
//! itself, truncating where Pillow rounds); a GIF whose first frame does not cover the whole
//! screen has black around it here, Pillow's palette entry 0 (or its transparent entry)
//! there; palette TIFFs are refused (`image` cannot read them).

use std::io::Cursor;
use std::path::Path;

// `::image` is the crate; this module is also called `image`.
use ::image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits};

pub use super::pixels::RgbImage;
pub use super::resize::{Interpolation, resize};
use crate::error::{Error, Result};

/// The most pixels keel decodes: Pillow's own limit (`Image.open` raises
/// `DecompressionBombError` above twice `Image.MAX_IMAGE_PIXELS`). Every image Keras can load,
/// keel loads, and a small file that claims an enormous size cannot exhaust memory.
pub const MAX_PIXELS: u64 = 2 * 89_478_485;

/// The largest difference in a sample that keel's tests allow between keel's and Pillow's
/// decoding of the same JPEG.
///
/// Both decoders are correct, but libjpeg-turbo (Pillow 13) and zune-jpeg (`image`) round
/// their IDCTs and chroma upsampling differently. Measured on the 397 photos of
/// `shared/datasets/hymenoptera` (244 million samples): 98.06% equal, 1.43% off by 1, 0.51%
/// by 2, 0.003% by 3, a handful by 4 to 7; mean 0.025, largest 7. On the synthetic, noisy
/// test images: largest 5, mean 0.36 (4:2:0 chroma); 2 for 4:4:4, 1 for greyscale, 2 for CMYK.
pub const JPEG_TOLERANCE: u8 = 8;

/// Read the image at `path` and convert it to RGB as Pillow's `open` + `convert("RGB")` do.
pub fn decode_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_bytes(&bytes)
        .map_err(|problem| Error::file(path, format!("not a readable image ({problem})")))
}

/// Keras's `load_img(path, target_size=target, interpolation=interp)` in RGB colour mode
/// (`target` is (height, width), as Keras's `target_size`; no aspect-ratio cropping).
pub fn load_img(
    path: &Path,
    target: Option<(usize, usize)>,
    interp: Interpolation,
) -> Result<RgbImage> {
    if let Some((height, width)) = target {
        let pixels = (height as u64).saturating_mul(width as u64);
        if pixels == 0 || pixels > MAX_PIXELS {
            return Err(Error::Invalid(format!(
                "target size {height}x{width}: must be at least 1x1 and at most {MAX_PIXELS} pixels"
            )));
        }
    }
    let img = decode_rgb(path)?;
    Ok(match target {
        Some((height, width)) if (height, width) != (img.height, img.width) => {
            resize(&img, height, width, interp)
        }
        _ => img,
    })
}

/// The formats keel reads: those the `image` crate is built with here.
const FORMATS: [ImageFormat; 6] = [
    ImageFormat::Png,
    ImageFormat::Jpeg,
    ImageFormat::Gif,
    ImageFormat::Bmp,
    ImageFormat::Tiff,
    ImageFormat::WebP,
];

/// Decode a whole file's bytes, or say what is wrong with them.
fn decode_bytes(bytes: &[u8]) -> Result<RgbImage, String> {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let Some(format) = reader.format() else {
        return Err("not a PNG, JPEG, GIF, BMP, TIFF or WebP file".into());
    };
    let name = format_name(format);
    if !FORMATS.contains(&format) {
        return Err(format!("{name} files are not supported"));
    }
    if format == ImageFormat::Jpeg && !jpeg_reaches_eoi(bytes) {
        return Err("truncated JPEG data: no end-of-image marker".into());
    }
    // A decoder bug must not take the process down with it: report it against the file.
    let img = std::panic::catch_unwind(|| decode_dynamic(reader, &name))
        .unwrap_or_else(|_| Err(format!("the {name} decoder crashed on this file")))?;
    // 16-bit greyscale PNG with a tRNS chunk comes out of `image` as grey + alpha, but
    // Pillow reads it as plain 16-bit grey (mode I;16), which it converts differently.
    let grey16_trns = format == ImageFormat::Png && png_color_type(bytes) == Some(0);
    Ok(to_rgb(img, grey16_trns))
}

/// Decode with `image`, refusing images with no pixels or more than [`MAX_PIXELS`] before
/// their pixels are allocated.
fn decode_dynamic(reader: ImageReader<Cursor<&[u8]>>, name: &str) -> Result<DynamicImage, String> {
    let mut reader = reader;
    let mut limits = Limits::default();
    // Room for the largest image allowed at 8 bytes a pixel (16-bit RGBA).
    limits.max_alloc = Some(MAX_PIXELS * 8);
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(|e| describe(name, &e))?;
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if pixels == 0 {
        return Err(format!("{name} of {w}x{h} pixels: nothing to load"));
    }
    if pixels > MAX_PIXELS {
        return Err(format!(
            "{name} of {w}x{h} pixels: more than the {MAX_PIXELS} keel (like Pillow) will decode"
        ));
    }
    DynamicImage::from_decoder(decoder).map_err(|e| describe(name, &e))
}

/// "PNG", "JPEG", ... for messages.
fn format_name(format: ImageFormat) -> String {
    format!("{format:?}").to_uppercase()
}

/// A decoding error in words, without the `image` crate's internals.
fn describe(name: &str, e: &ImageError) -> String {
    match e {
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("truncated {name} data")
        }
        ImageError::Decoding(d) => match std::error::Error::source(d) {
            Some(cause) => format!("corrupt {name} data: {cause}"),
            None => format!("corrupt {name} data"),
        },
        ImageError::Unsupported(u) => format!("unsupported kind of {name}: {u}"),
        other => format!("{name}: {other}"),
    }
}

/// The colour type byte of a PNG's header chunk (0 = greyscale), which must come first.
fn png_color_type(bytes: &[u8]) -> Option<u8> {
    (bytes.get(12..16)? == b"IHDR").then(|| bytes.get(25).copied())?
}

/// Whether a JPEG runs on to its end-of-image marker.
///
/// zune-jpeg decodes a JPEG that was cut short without complaint (the missing blocks come out
/// grey); Pillow raises "image file is truncated", even when only the final marker is missing.
/// So walk the markers: segments with a length are skipped whole (an embedded EXIF thumbnail
/// ends with its own EOI), and the bytes between markers are entropy-coded data, where 0xFF is
/// always followed by a stuffed 0x00 or a restart marker.
fn jpeg_reaches_eoi(data: &[u8]) -> bool {
    let mut i = 2; // after SOI
    while i + 1 < data.len() {
        if data[i] != 0xFF {
            i += 1; // scan data
            continue;
        }
        let marker = data[i + 1];
        i += 2;
        match marker {
            0xD9 => return true,            // EOI
            0xFF => i -= 1,                 // fill byte: the marker is in the next byte
            0x00 | 0x01 | 0xD0..=0xD7 => {} // stuffed byte, TEM, RSTn: no length follows
            _ => match data.get(i..i + 2) {
                Some(len) => i += usize::from(u16::from_be_bytes([len[0], len[1]])),
                None => return false,
            },
        }
    }
    false
}

/// Pillow's `convert("RGB")` for each mode `image` can hand back.
///
/// - 8-bit grey (Pillow's L, and 1-bit images, which both read as 0/255): replicated.
/// - Grey + alpha and RGBA: alpha dropped, not composited over anything.
/// - Palette images come out of `image` already looked up (transparent entries keep their
///   palette colour, as in Pillow), as RGB or RGBA.
/// - CMYK JPEG comes out of zune-jpeg as RGB by Pillow's formula (both take the inks as
///   Adobe-inverted, and `nk - c * nk / 255` rounds the same way as `c * k / 255`).
/// - 16-bit grey (Pillow's I;16): clipped at 255, not scaled (`I16_RGB` in Convert.c), so a
///   16-bit greyscale PNG mostly turns white. `grey16_trns` says a grey + alpha image is this
///   case with the alpha made up from a tRNS chunk.
/// - 16-bit grey + alpha, RGB, RGBA: Pillow reads the most significant byte of each sample.
/// - Float TIFFs: `image`'s own conversion (Pillow has no float RGB mode to compare with).
fn to_rgb(img: DynamicImage, grey16_trns: bool) -> RgbImage {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let clip = |v: u16| v.min(255) as u8;
    let msb = |v: u16| (v >> 8) as u8;
    let data = match img {
        DynamicImage::ImageRgb8(b) => b.into_raw(),
        DynamicImage::ImageRgba8(b) => pick(&b, 4, |p| [p[0], p[1], p[2]]),
        DynamicImage::ImageLuma8(b) => pick(&b, 1, |p| [p[0]; 3]),
        DynamicImage::ImageLumaA8(b) => pick(&b, 2, |p| [p[0]; 3]),
        DynamicImage::ImageLuma16(b) => pick(&b, 1, |p| [clip(p[0]); 3]),
        DynamicImage::ImageLumaA16(b) if grey16_trns => pick(&b, 2, |p| [clip(p[0]); 3]),
        DynamicImage::ImageLumaA16(b) => pick(&b, 2, |p| [msb(p[0]); 3]),
        DynamicImage::ImageRgb16(b) => pick(&b, 3, |p| [msb(p[0]), msb(p[1]), msb(p[2])]),
        DynamicImage::ImageRgba16(b) => pick(&b, 4, |p| [msb(p[0]), msb(p[1]), msb(p[2])]),
        other => other.to_rgb8().into_raw(),
    };
    RgbImage {
        height,
        width,
        data,
    }
}

/// Map each pixel of `channels` samples to an RGB triple.
fn pick<T: Copy>(samples: &[T], channels: usize, f: impl Fn(&[T]) -> [u8; 3]) -> Vec<u8> {
    let mut out = Vec::with_capacity(samples.len() / channels * 3);
    for px in samples.chunks_exact(channels) {
        out.extend_from_slice(&f(px));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/images");
    const KERAS_INPUTS: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/fixtures/keras/inputs"
    );

    /// How far a decoded image may be from Pillow's: the largest and the mean difference.
    type Tolerance = (u8, f64);
    const EXACT: Tolerance = (0, 0.0);
    /// The mean bound catches a systematic error that stays under the largest one.
    const JPEG: Tolerance = (JPEG_TOLERANCE, 0.5);
    /// `image` turns CMYK TIFF into RGB itself, truncating where Pillow rounds.
    const CMYK_TIFF: Tolerance = (1, 1.0);

    /// A `.npy` file of uint8 as (shape, data): just enough of the format for the fixtures.
    fn read_npy_u8(path: &Path) -> (Vec<usize>, Vec<u8>) {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(&bytes[..6], b"\x93NUMPY", "{}", path.display());
        let (header_len, start) = match bytes[6] {
            1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
            _ => (
                u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
                12,
            ),
        };
        let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
        assert!(
            header.contains("'descr': '|u1'"),
            "{}: {header}",
            path.display()
        );
        assert!(header.contains("'fortran_order': False"), "{header}");
        let shape = header.split("'shape': (").nth(1).unwrap();
        let shape: Vec<usize> = shape[..shape.find(')').unwrap()]
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse().unwrap())
            .collect();
        let data = bytes[start + header_len..].to_vec();
        assert_eq!(
            data.len(),
            shape.iter().product::<usize>(),
            "{}",
            path.display()
        );
        (shape, data)
    }

    /// The `.npy` files in the test data whose names start with an image file's name.
    fn expected_arrays() -> Vec<(PathBuf, String)> {
        let mut found: Vec<(PathBuf, String)> = std::fs::read_dir(DATA)
            .unwrap_or_else(|e| panic!("{DATA}: {e}"))
            .map(|entry| entry.unwrap().path())
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?.strip_suffix(".npy")?.to_string();
                Some((p, name))
            })
            .collect();
        found.sort();
        found
    }

    /// Compare `got` with the expected array at `npy`: a message if they differ by more than
    /// `tolerance` allows.
    fn compare(got: &RgbImage, npy: &Path, (max_tol, mean_tol): Tolerance) -> Option<String> {
        let (shape, want) = read_npy_u8(npy);
        if shape != [got.height, got.width, 3] {
            return Some(format!(
                "shape {shape:?}, got {}x{}x3",
                got.height, got.width
            ));
        }
        let diffs = got.data.iter().zip(&want).map(|(a, b)| a.abs_diff(*b));
        let max = diffs.clone().max().unwrap_or(0);
        let mean = diffs.map(f64::from).sum::<f64>() / want.len() as f64;
        (max > max_tol || mean > mean_tol).then(|| {
            format!("max difference {max}, mean {mean:.3} (allowed {max_tol}, mean {mean_tol})")
        })
    }

    #[test]
    fn every_test_image_decodes_as_pillow_does() {
        let mut failures = vec![];
        let mut checked = 0;
        for (npy, name) in expected_arrays() {
            let src = Path::new(DATA).join(&name);
            if !src.exists() {
                continue; // a resize expectation, checked below
            }
            let bytes = std::fs::read(&src).unwrap();
            let tolerance = if bytes.starts_with(&[0xFF, 0xD8]) {
                JPEG
            } else if name.starts_with("cmyk") && name.ends_with(".tif") {
                CMYK_TIFF
            } else {
                EXACT
            };
            match load_img(&src, None, Interpolation::Nearest) {
                Ok(got) => failures.extend(compare(&got, &npy, tolerance).map(|m| (name, m))),
                Err(e) => failures.push((name, e.to_string())),
            }
            checked += 1;
        }
        assert!(checked >= 35, "only {checked} test images found in {DATA}");
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn resized_test_images_match_pillow_exactly() {
        let mut failures = vec![];
        let mut checked = 0;
        for (npy, name) in expected_arrays() {
            // "<image>.<interpolation>_<height>x<width>"
            let Some((image, how)) = name.rsplit_once('.') else {
                continue;
            };
            let Some((interp, size)) = how.split_once('_') else {
                continue;
            };
            let (h, w) = size.split_once('x').unwrap();
            let target = (h.parse().unwrap(), w.parse().unwrap());
            let interp: Interpolation = interp.parse().unwrap();
            let got = load_img(&Path::new(DATA).join(image), Some(target), interp).unwrap();
            failures.extend(compare(&got, &npy, EXACT).map(|m| (name, m)));
            checked += 1;
        }
        assert!(
            checked >= 26,
            "only {checked} resize expectations found in {DATA}"
        );
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn keras_fixture_inputs_decode_exactly() {
        let dir = Path::new(KERAS_INPUTS);
        if !dir.is_dir() {
            println!("skipped: {KERAS_INPUTS} is absent (no ../shared beside the checkout)");
            return;
        }
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let png = entry.unwrap().path();
            let name = png.file_name().unwrap().to_str().unwrap();
            if !(name.starts_with("rgb_") && name.contains("_img") && name.ends_with(".png")) {
                continue;
            }
            let got = decode_rgb(&png).unwrap();
            let npy = png.with_extension("npy");
            assert_eq!(compare(&got, &npy, EXACT), None, "{}", png.display());
            checked += 1;
        }
        assert!(checked > 0, "no rgb_<H>x<W>_img<N>.png in {KERAS_INPUTS}");
    }

    #[test]
    fn bad_files_are_errors_naming_the_file_and_the_problem() {
        let data = Path::new(DATA);
        let cases = [
            ("bad_empty.png", "empty file"),
            ("bad_truncated.png", "truncated PNG data"),
            ("bad_truncated.jpg", "truncated JPEG data"),
            ("bad_garbage.jpg", "not a PNG, JPEG"),
            ("bad_text.txt", "not a PNG, JPEG"),
            ("no_such_file.png", "No such file"),
            ("", "Is a directory"),
        ];
        for (name, problem) in cases {
            let path = data.join(name);
            let err = load_img(&path, Some((5, 5)), Interpolation::Bilinear)
                .expect_err(name)
                .to_string();
            assert!(err.starts_with(&path.display().to_string()), "{err}");
            assert!(err.contains(problem), "{name}: {err}");
        }
    }

    #[test]
    fn images_beyond_pillows_pixel_limit_are_refused_unread() {
        // A 50-byte GIF whose header claims 60000x60000 pixels (3.6 billion).
        let mut gif = b"GIF89a".to_vec();
        gif.extend_from_slice(&60000u16.to_le_bytes());
        gif.extend_from_slice(&60000u16.to_le_bytes());
        gif.extend_from_slice(&[0, 0, 0]);
        gif.extend_from_slice(&[
            0x2C, 0, 0, 0, 0, 0x60, 0xEA, 0x60, 0xEA, 0, 2, 2, 0x4C, 1, 0,
        ]);
        gif.push(0x3B);
        let err = decode_bytes(&gif).unwrap_err();
        assert!(err.contains("60000x60000 pixels: more than"), "{err}");
    }

    #[test]
    fn jpeg_end_marker_is_found_past_thumbnails_and_scan_data() {
        let mut jpeg = vec![0xFF, 0xD8];
        // An APP1 segment holding a stray EOI (as an EXIF thumbnail does).
        jpeg.extend_from_slice(&[0xFF, 0xE1, 0, 6, b'a', b'b', 0xFF, 0xD9]);
        // SOS header, then scan data with a stuffed 0xFF and a restart marker.
        jpeg.extend_from_slice(&[0xFF, 0xDA, 0, 2, 0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56]);
        assert!(!jpeg_reaches_eoi(&jpeg));
        jpeg.extend_from_slice(&[0xFF, 0xFF, 0xD9, b'x']); // fill byte, EOI, trailing junk
        assert!(jpeg_reaches_eoi(&jpeg));
    }

    #[test]
    fn interpolation_parses_keras_names() {
        assert_eq!(
            "nearest".parse::<Interpolation>().unwrap(),
            Interpolation::Nearest
        );
        assert_eq!(
            "bilinear".parse::<Interpolation>().unwrap(),
            Interpolation::Bilinear
        );
        assert_eq!(Interpolation::default(), Interpolation::Nearest);
        let err = "bicubic".parse::<Interpolation>().unwrap_err().to_string();
        assert!(
            err.contains("bicubic") && err.contains("nearest, bilinear"),
            "{err}"
        );
        for interp in [Interpolation::Nearest, Interpolation::Bilinear] {
            assert_eq!(interp.to_string().parse::<Interpolation>().unwrap(), interp);
        }
    }

    #[test]
    fn target_sizes_must_be_positive_and_bounded() {
        let png = Path::new(DATA).join("rgb_17x23.png");
        for target in [(0, 5), (5, 0), (usize::MAX, 2)] {
            let err = load_img(&png, Some(target), Interpolation::Nearest).unwrap_err();
            assert!(matches!(err, Error::Invalid(_)), "{err}");
        }
        let img = decode_rgb(&png).unwrap();
        let same = load_img(&png, Some((17, 23)), Interpolation::Bilinear).unwrap();
        assert_eq!(same, img);
        // `resize` itself takes any size: a zero side gives an empty image, not a panic.
        for interp in [Interpolation::Nearest, Interpolation::Bilinear] {
            assert!(resize(&img, 0, 4, interp).data.is_empty());
            assert!(resize(&img, 3, 0, interp).data.is_empty());
        }
    }
}
