//! Activation maps of one layer as a labelled grid (`keel visualize maps`).
//!
//! Each channel is scaled to [0, 1] by its own minimum and maximum before it is coloured: the
//! channels of one layer differ in range by orders of magnitude, and a shared scale would show
//! the loudest few and leave the rest blank. The colour bar says so (0 = the channel's minimum,
//! 1 = its maximum); the exact ranges are not drawn, since the pattern is what a grid is for.
//!
//! The grid itself ([`GridLayout`], [`grid_png`]) is shared with `filters`: tiles of one size,
//! each labelled above, under a title, optionally with the colour scale on the right.

use image::{ImageBuffer, Rgb};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::plots::{draw_err, encode_png, ensure_font, fitted_size, font, shade};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Smallest side a tile is upscaled to (by a whole factor, nearest neighbour): a 7x7 map at
/// its own size is a smudge, at 14x it is readable cell by cell.
pub const MIN_TILE: usize = 96;

/// Outer margin of the picture, in pixels.
pub const MARGIN: u32 = 16;
/// Band above the grid holding the title.
pub const TITLE_H: u32 = 52;
/// Band above each tile holding its label.
pub const LABEL_H: u32 = 18;
/// Space between tiles, horizontally and between rows.
pub const GAP: u32 = 10;
/// Narrowest picture: a grid of one or two tiles still gets a readable title.
pub const MIN_WIDTH: u32 = 520;
/// Space between the grid and the colour bar, the bar, and its tick labels.
pub const BAR_GAP: u32 = 24;
pub const BAR_W: u32 = 18;
pub const BAR_LABELS_W: u32 = 110;

/// Most tiles one grid draws: bounds memory against `--channels 0..100000` on a wide layer.
pub const MAX_TILES: usize = 1024;

/// One labelled picture of the grid, 8-bit RGB, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Tile {
    pub label: String,
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

/// One channel of a layer's output for one image, with the range it was scaled by.
#[derive(Clone, Debug)]
pub struct ChannelMap {
    pub channel: usize,
    pub height: usize,
    pub width: usize,
    /// The map scaled to [0, 1] by [`normalize`].
    pub values: Vec<f32>,
    /// The finite minimum and maximum before scaling (both 0 for an all-NaN map).
    pub min: f32,
    pub max: f32,
}

impl ChannelMap {
    /// A channel that is the same everywhere carries no pattern; its label says so, since a
    /// blank tile could otherwise read as a drawing failure.
    pub fn is_flat(&self) -> bool {
        self.max <= self.min
    }
}

/// The channels to show from `--channels`: `A..B` (half-open), `N`, or a comma-separated
/// list of both (`0..8,12,20..24`), each inside `0..width`. Without a spec, the first
/// `default_count` channels (or all, if fewer).
pub fn parse_channels(
    spec: Option<&str>,
    width: usize,
    default_count: usize,
) -> Result<Vec<usize>> {
    let Some(spec) = spec else {
        return Ok((0..width.min(default_count)).collect());
    };
    let mut out = Vec::new();
    for part in spec.split(',') {
        let (lo, hi) = parse_channel_item(part.trim(), spec)?;
        if hi > width {
            return Err(Error::Invalid(format!(
                "--channels {spec}: channel {} is outside the layer's {width} channels \
                 (0..{width})",
                hi - 1
            )));
        }
        out.extend(lo..hi);
        if out.len() > MAX_TILES {
            return Err(Error::Invalid(format!(
                "--channels {spec}: at most {MAX_TILES} channels fit one picture"
            )));
        }
    }
    Ok(out)
}

/// One item of `--channels` as a half-open range.
fn parse_channel_item(item: &str, spec: &str) -> Result<(usize, usize)> {
    let garbled = || {
        Error::Invalid(format!(
            "--channels {spec}: '{item}' is not a channel (N) or a range (A..B, B excluded)"
        ))
    };
    let number = |s: &str| s.trim().parse::<usize>().map_err(|_| garbled());
    match item.split_once("..") {
        Some((a, b)) => {
            let (lo, hi) = (number(a)?, number(b)?);
            if hi <= lo {
                return Err(Error::Invalid(format!(
                    "--channels {spec}: {item} is empty (A..B takes channels A up to B, B \
                     excluded, so B must exceed A)"
                )));
            }
            Ok((lo, hi))
        }
        None => {
            let n = number(item)?;
            Ok((n, n + 1))
        }
    }
}

/// `values` scaled to [0, 1] by their own finite minimum and maximum. A constant map becomes
/// all 0 and non-finite values become 0, so nothing downstream ever sees a NaN.
pub fn normalize(values: &[f32]) -> (Vec<f32>, f32, f32) {
    let finite = values.iter().copied().filter(|v| v.is_finite());
    let (min, max) = finite.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if min > max {
        return (vec![0.0; values.len()], 0.0, 0.0);
    }
    let span = max - min;
    let scaled = values
        .iter()
        .map(|&v| {
            if v.is_finite() && span > 0.0 {
                ((v - min) / span).clamp(0.0, 1.0)
            } else {
                0.0
            }
        })
        .collect();
    (scaled, min, max)
}

/// The `channels` of `act`, a host `(1, H, W, C)` layer output, each normalised on its own.
pub fn channel_maps(act: &Tensor, channels: &[usize]) -> Result<Vec<ChannelMap>> {
    let [n, h, w, c] = act.shape().nhwc("activation maps")?;
    if n != 1 {
        return Err(Error::Shape(format!(
            "activation maps are drawn for one image, got a batch of {n}"
        )));
    }
    let data = act.values::<f32>()?;
    channels
        .iter()
        .map(|&ch| {
            if ch >= c {
                return Err(Error::Invalid(format!(
                    "channel {ch} is outside the layer's {c} channels"
                )));
            }
            let raw: Vec<f32> = (0..h * w).map(|p| data[p * c + ch]).collect();
            let (values, min, max) = normalize(&raw);
            Ok(ChannelMap {
                channel: ch,
                height: h,
                width: w,
                values,
                min,
                max,
            })
        })
        .collect()
}

/// The whole factor that brings a `h`x`w` picture's longer side up to at least [`MIN_TILE`].
pub fn upscale_factor(h: usize, w: usize) -> usize {
    let side = h.max(w).max(1);
    MIN_TILE.div_ceil(side).max(1)
}

/// `rgb` (`h`x`w`) enlarged `k` times by repeating pixels: no interpolation, so each cell of a
/// small map stays a visible square, as it is in the network.
pub fn upscale_nearest(rgb: &[u8], h: usize, w: usize, k: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(rgb.len() * k * k);
    for y in 0..h * k {
        let row = &rgb[(y / k) * w * 3..(y / k + 1) * w * 3];
        for x in 0..w * k {
            out.extend_from_slice(&row[(x / k) * 3..(x / k) * 3 + 3]);
        }
    }
    out
}

/// A channel coloured by the shared perceptual scale and upscaled into a tile.
pub fn map_tile(map: &ChannelMap) -> Tile {
    let rgb: Vec<u8> = map
        .values
        .iter()
        .flat_map(|&v| {
            let RGBColor(r, g, b) = shade(f64::from(v));
            [r, g, b]
        })
        .collect();
    let k = upscale_factor(map.height, map.width);
    let label = if map.is_flat() {
        format!("{} (flat)", map.channel)
    } else {
        map.channel.to_string()
    };
    Tile {
        label,
        width: (map.width * k) as u32,
        height: (map.height * k) as u32,
        rgb: upscale_nearest(&rgb, map.height, map.width, k),
    }
}

/// Where everything goes, from the tile count and size alone (never from text widths), so a
/// test can tell from the picture's size how many tiles it holds:
///
/// - `cols = min(columns, n)`, `rows = ceil(n / cols)`;
/// - `grid_w = cols * tile_w + (cols - 1) * GAP`, `grid_h = rows * (LABEL_H + tile_h) +
///   (rows - 1) * GAP`;
/// - `width = max(MIN_WIDTH, MARGIN + grid_w + bar + MARGIN)`, where `bar` is `BAR_GAP +
///   BAR_W + BAR_LABELS_W` with a colour bar and 0 without;
/// - `height = TITLE_H + grid_h + MARGIN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GridLayout {
    pub columns: u32,
    pub rows: u32,
    pub tile_w: u32,
    pub tile_h: u32,
    pub colour_bar: bool,
    pub width: u32,
    pub height: u32,
}

impl GridLayout {
    pub fn new(n: usize, columns: usize, tile_w: u32, tile_h: u32, colour_bar: bool) -> Self {
        let n = n.max(1) as u32;
        let cols = (columns.max(1) as u32).min(n);
        let rows = n.div_ceil(cols);
        let grid_w = cols * tile_w + (cols - 1) * GAP;
        let grid_h = rows * (LABEL_H + tile_h) + (rows - 1) * GAP;
        let bar = if colour_bar {
            BAR_GAP + BAR_W + BAR_LABELS_W
        } else {
            0
        };
        GridLayout {
            columns: cols,
            rows,
            tile_w,
            tile_h,
            colour_bar,
            width: (MARGIN + grid_w + bar + MARGIN).max(MIN_WIDTH),
            height: TITLE_H + grid_h + MARGIN,
        }
    }

    /// Top-left corner of tile `i`'s picture (below its label).
    fn tile_origin(&self, i: usize) -> (u32, u32) {
        let (r, c) = (i as u32 / self.columns, i as u32 % self.columns);
        let x = MARGIN + c * (self.tile_w + GAP);
        let y = TITLE_H + r * (LABEL_H + self.tile_h + GAP) + LABEL_H;
        (x, y)
    }

    fn grid_bottom(&self) -> u32 {
        self.height - MARGIN
    }

    fn grid_right(&self) -> u32 {
        MARGIN + self.columns * self.tile_w + (self.columns - 1) * GAP
    }
}

/// `tiles` (all one size) in a grid of `columns`, under `title`, with the normalised colour
/// scale on the right when `colour_bar` is set; PNG bytes.
pub fn grid_png(title: &str, tiles: &[Tile], columns: usize, colour_bar: bool) -> Result<Vec<u8>> {
    let first = tiles
        .first()
        .ok_or_else(|| Error::Invalid("no tiles to draw".into()))?;
    if tiles.len() > MAX_TILES {
        return Err(Error::Invalid(format!(
            "{} tiles is too many for one picture (at most {MAX_TILES})",
            tiles.len()
        )));
    }
    let (tw, th) = (first.width, first.height);
    if let Some(t) = tiles
        .iter()
        .find(|t| (t.width, t.height) != (tw, th) || t.rgb.len() != (tw * th * 3) as usize)
    {
        return Err(Error::Invalid(format!(
            "tile {} is {}x{} ({} bytes), the grid's tiles are {tw}x{th}",
            t.label,
            t.width,
            t.height,
            t.rgb.len()
        )));
    }
    let layout = GridLayout::new(tiles.len(), columns, tw, th, colour_bar);
    let size = (layout.width, layout.height);
    let mut buf = vec![255u8; size.0 as usize * size.1 as usize * 3];
    draw_text(&mut buf, &layout, title, tiles).map_err(Error::Invalid)?;
    let mut img = ImageBuffer::<Rgb<u8>, _>::from_raw(size.0, size.1, buf)
        .ok_or_else(|| Error::Invalid("grid buffer does not match its size".into()))?;
    for (i, tile) in tiles.iter().enumerate() {
        let (x, y) = layout.tile_origin(i);
        blit(&mut img, tile, x, y);
    }
    if colour_bar {
        draw_bar(&mut img, &layout);
    }
    encode_png(img.into_raw(), size).map_err(Error::Invalid)
}

/// Title, labels, tile frames and the bar's tick labels: everything plotters draws.
fn draw_text(
    buf: &mut [u8],
    layout: &GridLayout,
    title: &str,
    tiles: &[Tile],
) -> std::result::Result<(), String> {
    ensure_font()?;
    let root = BitMapBackend::with_buffer(buf, (layout.width, layout.height)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let size = fitted_size(title, 20.0, layout.width.saturating_sub(2 * MARGIN));
    let style = font(size).pos(Pos::new(HPos::Left, VPos::Top));
    root.draw(&Text::new(title.to_string(), (MARGIN as i32, 16), style))
        .map_err(draw_err)?;
    let label_size = fitted_size("0000 (flat)", 13.0, layout.tile_w.max(24));
    for (i, tile) in tiles.iter().enumerate() {
        let (x, y) = layout.tile_origin(i);
        let (x, y) = (x as i32, y as i32);
        let style = font(label_size).pos(Pos::new(HPos::Left, VPos::Bottom));
        root.draw(&Text::new(tile.label.clone(), (x, y - 3), style))
            .map_err(draw_err)?;
        let frame = [
            (x - 1, y - 1),
            (x + tile.width as i32, y + tile.height as i32),
        ];
        root.draw(&Rectangle::new(
            frame,
            RGBColor(150, 150, 150).stroke_width(1),
        ))
        .map_err(draw_err)?;
    }
    if layout.colour_bar {
        let x = (layout.grid_right() + BAR_GAP + BAR_W + 6) as i32;
        let (top, bottom) = (TITLE_H + LABEL_H, layout.grid_bottom());
        for (text, y, v) in [
            ("1 = channel max", top, VPos::Top),
            ("0 = channel min", bottom, VPos::Bottom),
        ] {
            let style = font(12.0).pos(Pos::new(HPos::Left, v));
            root.draw(&Text::new(text, (x, y as i32), style))
                .map_err(draw_err)?;
        }
    }
    root.present().map_err(draw_err)
}

fn blit(img: &mut ImageBuffer<Rgb<u8>, Vec<u8>>, tile: &Tile, x0: u32, y0: u32) {
    for (k, px) in tile.rgb.chunks_exact(3).enumerate() {
        let (x, y) = (x0 + k as u32 % tile.width, y0 + k as u32 / tile.width);
        if x < img.width() && y < img.height() {
            img.put_pixel(x, y, Rgb([px[0], px[1], px[2]]));
        }
    }
}

/// The colour scale, top (1) to bottom (0), as tall as the grid's tiles span.
fn draw_bar(img: &mut ImageBuffer<Rgb<u8>, Vec<u8>>, layout: &GridLayout) {
    let x0 = layout.grid_right() + BAR_GAP;
    let (top, bottom) = (TITLE_H + LABEL_H, layout.grid_bottom());
    let h = bottom.saturating_sub(top).max(1);
    for y in top..bottom {
        let frac = 1.0 - f64::from(y - top) / f64::from((h - 1).max(1));
        let RGBColor(r, g, b) = shade(frac);
        for x in x0..x0 + BAR_W {
            img.put_pixel(x, y, Rgb([r, g, b]));
        }
    }
    let grey = Rgb([90, 90, 90]);
    for x in x0..x0 + BAR_W {
        img.put_pixel(x, top, grey);
        img.put_pixel(x, bottom - 1, grey);
    }
    for y in top..bottom {
        img.put_pixel(x0, y, grey);
        img.put_pixel(x0 + BAR_W - 1, y, grey);
    }
}

/// What a maps picture shows, besides the activations.
pub struct MapsPicture<'a> {
    pub layer: &'a str,
    pub image_name: &'a str,
    pub columns: usize,
}

/// The grid of `channels` of `act` (a host `(1, H, W, C)` output of `pic.layer`), PNG bytes.
pub fn maps_png(pic: &MapsPicture<'_>, act: &Tensor, channels: &[usize]) -> Result<Vec<u8>> {
    let maps = channel_maps(act, channels)?;
    let tiles: Vec<Tile> = maps.iter().map(map_tile).collect();
    let [_, h, w, c] = act.shape().nhwc("activation maps")?;
    let title = format!(
        "{} ({h}x{w}x{c}) of {}: {} of {c} channels, each scaled to its own min..max",
        pic.layer,
        pic.image_name,
        channels.len()
    );
    grid_png(&title, &tiles, pic.columns, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_upscale_repeats_pixels() {
        let rgb = [1, 2, 3, 4, 5, 6];
        let up = upscale_nearest(&rgb, 1, 2, 2);
        assert_eq!(
            up,
            [
                1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 5, 6, 1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 5, 6
            ]
        );
    }

    #[test]
    fn layout_follows_its_formula() {
        let g = GridLayout::new(10, 4, 150, 100, false);
        assert_eq!((g.columns, g.rows), (4, 3));
        assert_eq!(g.width, MARGIN * 2 + 4 * 150 + 3 * GAP);
        assert_eq!(g.height, TITLE_H + 3 * (LABEL_H + 100) + 2 * GAP + MARGIN);
        assert_eq!(GridLayout::new(1, 8, 10, 10, true).width, MIN_WIDTH);
    }
}
