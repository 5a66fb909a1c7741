//! TEMPORARY stub until the Pillow-exact module lands.
use crate::error::{Error, Result};
use std::path::Path;
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Interpolation {
    #[default]
    Nearest,
    Bilinear,
}
impl std::str::FromStr for Interpolation {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "nearest" => Ok(Self::Nearest),
            "bilinear" => Ok(Self::Bilinear),
            _ => Err(format!("bad {s}")),
        }
    }
}
pub struct RgbImage {
    pub height: usize,
    pub width: usize,
    pub data: Vec<u8>,
}
pub fn load_img(
    path: &Path,
    target: Option<(usize, usize)>,
    _i: Interpolation,
) -> Result<RgbImage> {
    let img = image::open(path)
        .map_err(|e| Error::file(path, e.to_string()))?
        .to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (th, tw) = target.unwrap_or((h, w));
    let mut data = Vec::with_capacity(th * tw * 3);
    for y in 0..th {
        for x in 0..tw {
            let sy = ((y as f64 + 0.5) * h as f64 / th as f64) as u32;
            let sx = ((x as f64 + 0.5) * w as f64 / tw as f64) as u32;
            data.extend_from_slice(&img.get_pixel(sx, sy).0);
        }
    }
    Ok(RgbImage {
        height: th,
        width: tw,
        data,
    })
}
