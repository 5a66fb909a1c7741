//! PNG charts for training reports: loss/accuracy curves and a confusion matrix.
//!
//! Text is rasterised by `ab_glyph` from DejaVu Sans compiled into the binary (the
//! `dejavu` crate), never looked up on the system: CI machines and containers often
//! have no fonts and no fontconfig at all, and a chart without labels is worthless.
//! Charts are drawn into an in-memory RGB buffer and encoded with `image`, so callers
//! decide where the bytes go (a file, an HTML report, a test assertion).

use std::io::Cursor;
use std::sync::OnceLock;

use image::{ImageBuffer, ImageFormat, Rgb};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, FontTransform, register_font};

/// One epoch of a training run, as the curves plot needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochPoint {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: Option<f64>,
    pub val_acc: Option<f64>,
}

/// The family name plotters asks for by default, so its own defaults (legend, mesh)
/// also resolve to the embedded font rather than failing.
const FONT_FAMILY: &str = "sans-serif";

const CURVES_SIZE: (u32, u32) = (1200, 450);
const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
const VAL_COLOR: RGBColor = RGBColor(230, 110, 0);
const Y_TICKS: usize = 8;
const MARKER_COLOR: RGBColor = RGBColor(120, 120, 120);
const PHASE_COLOR: RGBColor = RGBColor(214, 39, 40);
const GRID_BOLD: RGBColor = RGBColor(215, 215, 215);

/// Largest confusion grid side in pixels: bounds memory for absurd class counts.
const MAX_GRID_PX: u32 = 2400;
const MAX_LABEL_CHARS: usize = 16;

/// Registers the embedded font once per process; plotters keeps a global font table,
/// and registering again on every call would only churn its lock.
pub(crate) fn ensure_font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            register_font(FONT_FAMILY, FontStyle::Normal, dejavu::sans::regular())
                .map_err(|_| "embedded DejaVu Sans font could not be parsed".to_string())
        })
        .clone()
}

pub(crate) fn font(size: f64) -> TextStyle<'static> {
    coloured_font(size, BLACK)
}

fn coloured_font(size: f64, color: RGBColor) -> TextStyle<'static> {
    (FONT_FAMILY, size).into_font().color(&color)
}

/// Pixel width of `text` at `size`; 0 if the font cannot measure it, which only
/// makes the layout a little tighter rather than failing the whole chart.
fn text_width(text: &str, size: f64) -> u32 {
    (FONT_FAMILY, size)
        .into_font()
        .box_size(text)
        .map(|(w, _)| w)
        .unwrap_or(0)
}

/// Largest size up to `max_size` at which `text` fits in `max_width` pixels, so long
/// titles shrink instead of being clipped at the image edge.
pub(crate) fn fitted_size(text: &str, max_size: f64, max_width: u32) -> f64 {
    let w = text_width(text, max_size);
    if w <= max_width || w == 0 {
        max_size
    } else {
        max_size * f64::from(max_width) / f64::from(w)
    }
}

pub(crate) fn draw_err<E: std::fmt::Display>(e: E) -> String {
    format!("plot drawing failed: {e}")
}

pub(crate) fn encode_png(buf: Vec<u8>, (w, h): (u32, u32)) -> Result<Vec<u8>, String> {
    let img = ImageBuffer::<Rgb<u8>, _>::from_raw(w, h, buf)
        .ok_or_else(|| "plot buffer does not match the image size".to_string())?;
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png)
        .map_err(|e| format!("PNG encoding failed: {e}"))?;
    Ok(out.into_inner())
}

/// Title drawn by hand rather than with `titled`, so it can shrink to fit the width.
fn draw_title(root: &DrawingArea<BitMapBackend<'_>, Shift>, title: &str) -> Result<(), String> {
    let (w, _) = root.dim_in_pixel();
    let size = fitted_size(title, 24.0, w.saturating_sub(40));
    let style = font(size).pos(Pos::new(HPos::Center, VPos::Top));
    root.draw(&Text::new(title.to_string(), (w as i32 / 2, 14), style))
        .map_err(draw_err)
}

/// Renders training curves: loss on the left, accuracy on the right, both over epoch.
///
/// Non-finite values (a diverged epoch) are skipped rather than poisoning the axis
/// ranges; the line simply joins the neighbouring finite epochs.
///
/// With `fine_tune_from`, the epoch where fine-tuning starts gets a marker, so the two phases
/// read as one run.
pub fn curves_png(
    title: &str,
    points: &[EpochPoint],
    best_epoch: Option<usize>,
    fine_tune_from: Option<usize>,
) -> Result<Vec<u8>, String> {
    if points.is_empty() {
        return Err("curves_png: no epochs to plot".to_string());
    }
    ensure_font()?;
    let mut sorted: Vec<&EpochPoint> = points.iter().collect();
    sorted.sort_by_key(|p| p.epoch);

    let (w, h) = CURVES_SIZE;
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        draw_title(&root, title)?;
        let (_, body) = root.split_vertically(50);
        let (left, right) = body.split_horizontally(w / 2);
        draw_panel(&left, &sorted, Metric::Loss, best_epoch, fine_tune_from)?;
        draw_panel(
            &right,
            &sorted,
            Metric::Accuracy,
            best_epoch,
            fine_tune_from,
        )?;
        root.present().map_err(draw_err)?;
    }
    encode_png(buf, (w, h))
}

#[derive(Clone, Copy)]
enum Metric {
    Loss,
    Accuracy,
}

impl Metric {
    fn name(self) -> &'static str {
        match self {
            Metric::Loss => "loss",
            Metric::Accuracy => "accuracy",
        }
    }

    fn train(self, p: &EpochPoint) -> f64 {
        match self {
            Metric::Loss => p.train_loss,
            Metric::Accuracy => p.train_acc,
        }
    }

    fn val(self, p: &EpochPoint) -> Option<f64> {
        match self {
            Metric::Loss => p.val_loss,
            Metric::Accuracy => p.val_acc,
        }
    }

    /// Loss falls and accuracy rises, so these corners are usually empty.
    fn legend_position(self) -> SeriesLabelPosition {
        match self {
            Metric::Loss => SeriesLabelPosition::UpperRight,
            Metric::Accuracy => SeriesLabelPosition::LowerRight,
        }
    }

    fn y_range(self, values: &[f64]) -> (f64, f64) {
        match self {
            Metric::Loss => padded_range(values, true),
            // A fixed 0..1 scale keeps runs comparable at a glance; values outside it
            // (say, percentages) fall back to a fitted range so nothing is hidden.
            Metric::Accuracy if values.iter().all(|v| (0.0..=1.0).contains(v)) => (-0.02, 1.02),
            Metric::Accuracy => padded_range(values, false),
        }
    }
}

/// Min..max of `values` with a margin; an empty or flat series still gets a non-empty
/// range, because plotters maps a zero-width range to NaN pixels.
fn padded_range(values: &[f64], clamp_at_zero: bool) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    let pad = if span > 1e-12 * hi.abs().max(1.0) {
        span * 0.06
    } else if hi.abs() > 1e-12 {
        hi.abs() * 0.1
    } else {
        0.5
    };
    let bottom = if clamp_at_zero && lo >= 0.0 {
        (lo - pad).max(0.0)
    } else {
        lo - pad
    };
    (bottom, hi + pad)
}

/// Decimals for tick labels, from the step plotters will choose (the smallest of
/// 1, 2 or 5 times a power of ten giving at most `max_ticks` ticks), so labels read
/// `0.5, 1.0, 1.5` rather than plotters' float formatting, which can print
/// `0.30000000000000004` or mix `1` with `1.5`.
fn tick_decimals(span: f64, max_ticks: usize) -> usize {
    if !(span.is_finite() && span > 0.0) {
        return 2;
    }
    let mut step = 10f64.powf(span.log10().ceil());
    'search: loop {
        for factor in [0.5, 0.4, 0.5] {
            let smaller = step * factor;
            if (span / smaller).floor() as usize + 1 > max_ticks {
                break 'search;
            }
            step = smaller;
        }
    }
    (-step.log10().floor()).clamp(0.0, 9.0) as usize
}

/// Values this large are a diverged run, not data, and near `f64::MAX` the padded
/// axis range overflows to infinity, on which plotters' tick search never returns.
const PLOTTABLE_LIMIT: f64 = 1e100;

fn finite_series(
    points: &[&EpochPoint],
    value: impl Fn(&EpochPoint) -> Option<f64>,
) -> Vec<(f64, f64)> {
    points
        .iter()
        .filter_map(|p| {
            value(p)
                .filter(|v| v.abs() < PLOTTABLE_LIMIT)
                .map(|v| (p.epoch as f64, v))
        })
        .collect()
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    points: &[&EpochPoint],
    metric: Metric,
    best_epoch: Option<usize>,
    fine_tune_from: Option<usize>,
) -> Result<(), String> {
    let train = finite_series(points, |p| Some(metric.train(p)));
    let val = finite_series(points, |p| metric.val(p));
    let values: Vec<f64> = train.iter().chain(&val).map(|&(_, v)| v).collect();
    let (y_lo, y_hi) = metric.y_range(&values);

    // `points` is sorted and non-empty (checked by the caller).
    let first = points.first().map_or(0, |p| p.epoch);
    let last = points.last().map_or(0, |p| p.epoch);
    let x_span = (last - first) as f64;
    // Padding keeps end-point markers whole; a lone epoch gets a unit-wide axis.
    let x_pad = if x_span == 0.0 {
        0.5
    } else {
        (x_span * 0.03).max(0.2)
    };
    let (x_lo, x_hi) = (first as f64 - x_pad, last as f64 + x_pad);
    // At most one label per whole epoch, so ticks never land between epochs.
    let x_labels = ((x_hi - x_lo).floor() as usize + 1).clamp(1, 10);
    let y_decimals = tick_decimals(y_hi - y_lo, Y_TICKS);

    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .margin_right(24)
        .x_label_area_size(48)
        .y_label_area_size(70)
        .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
        .map_err(draw_err)?;
    let x_fmt = |x: &f64| {
        if (x - x.round()).abs() < 1e-9 {
            format!("{}", x.round())
        } else {
            format!("{x:.1}")
        }
    };
    let y_fmt = |y: &f64| format!("{y:.y_decimals$}");
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(metric.name())
        .axis_desc_style(font(17.0))
        .label_style(font(14.0))
        .x_labels(x_labels)
        .y_labels(Y_TICKS)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .max_light_lines(0)
        .bold_line_style(GRID_BOLD)
        .draw()
        .map_err(draw_err)?;

    if let Some(start) = fine_tune_from.filter(|s| (first..=last).contains(s)) {
        // Between the last head-only epoch and the first fine-tuning one.
        let x = start as f64 - 0.5;
        let style = PHASE_COLOR.stroke_width(2);
        chart
            .draw_series(LineSeries::new(vec![(x, y_lo), (x, y_hi)], style))
            .map_err(draw_err)?
            .label(format!("fine-tuning from epoch {start}"))
            .legend(move |(lx, ly)| PathElement::new(vec![(lx, ly), (lx + 20, ly)], style));
    }

    if let Some(best) = best_epoch.filter(|b| (first..=last).contains(b)) {
        let x = best as f64;
        let style = MARKER_COLOR.stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(x, y_lo), (x, y_hi)],
                6,
                4,
                style,
            ))
            .map_err(draw_err)?
            .label(format!("best (epoch {best})"))
            .legend(move |(lx, ly)| PathElement::new(vec![(lx, ly), (lx + 20, ly)], style));
        // Named in the legend only: a text label at the line's top ends up under the legend
        // whenever the best epoch is among the last ones.
    }

    for (series, name, color) in [(&train, "train", TRAIN_COLOR), (&val, "val", VAL_COLOR)] {
        if series.is_empty() {
            continue;
        }
        let style = color.stroke_width(2);
        chart
            .draw_series(LineSeries::new(series.iter().copied(), style).point_size(3))
            .map_err(draw_err)?
            .label(name)
            .legend(move |(lx, ly)| PathElement::new(vec![(lx, ly), (lx + 20, ly)], style));
    }

    chart
        .configure_series_labels()
        .position(metric.legend_position())
        .label_font(font(14.0))
        .background_style(WHITE.mix(0.85))
        .border_style(GRID_BOLD)
        .draw()
        .map_err(draw_err)
}

/// Class names longer than this are cut so one verbose label cannot squeeze the grid.
fn truncate_label(name: &str) -> String {
    if name.chars().count() <= MAX_LABEL_CHARS {
        name.to_string()
    } else {
        let mut s: String = name.chars().take(MAX_LABEL_CHARS - 1).collect();
        s.push('…');
        s
    }
}

/// White through mid blue to navy (close to matplotlib's "Blues"): a straight white to
/// navy blend goes greyish in the middle, where most off-diagonal cells live.
pub(crate) fn shade(frac: f64) -> RGBColor {
    const STOPS: [(f64, [f64; 3]); 3] = [
        (0.0, [255.0, 255.0, 255.0]),
        (0.5, [107.0, 174.0, 214.0]),
        (1.0, [8.0, 48.0, 107.0]),
    ];
    let f = if frac.is_finite() {
        frac.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (a, b) = if f <= STOPS[1].0 {
        (STOPS[0], STOPS[1])
    } else {
        (STOPS[1], STOPS[2])
    };
    let t = (f - a.0) / (b.0 - a.0);
    let mix = |i: usize| (a.1[i] + (b.1[i] - a.1[i]) * t).round() as u8;
    RGBColor(mix(0), mix(1), mix(2))
}

/// Black on light shades, white on dark ones, judged by perceived luminance.
fn text_color_on(bg: RGBColor) -> RGBColor {
    let RGBColor(r, g, b) = bg;
    let luma = 0.299 * f64::from(r) + 0.587 * f64::from(g) + 0.114 * f64::from(b);
    if luma < 140.0 { WHITE } else { BLACK }
}

/// Renders a confusion matrix heat map (rows: true class, columns: predicted class).
///
/// Cells are shaded by the fraction of their row, not by raw count, so a rare class
/// with a poor recall is as visible as a common one; the count is written in the cell.
pub fn confusion_png(
    title: &str,
    classes: &[String],
    matrix: &[Vec<u64>],
) -> Result<Vec<u8>, String> {
    let n = classes.len();
    if n == 0 {
        return Err("confusion_png: no classes".to_string());
    }
    if matrix.len() != n {
        return Err(format!(
            "confusion_png: matrix has {} rows but there are {n} classes",
            matrix.len()
        ));
    }
    if let Some((i, row)) = matrix.iter().enumerate().find(|(_, r)| r.len() != n) {
        return Err(format!(
            "confusion_png: matrix row {i} has {} columns but there are {n} classes",
            row.len()
        ));
    }
    if n as u64 > u64::from(MAX_GRID_PX) {
        return Err(format!(
            "confusion_png: {n} classes is too many to draw (at most {MAX_GRID_PX})"
        ));
    }
    ensure_font()?;

    let layout = ConfusionLayout::new(title, classes, matrix);
    let size = (layout.width, layout.height);
    let mut buf = vec![255u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        draw_title(&root, title)?;
        layout.draw(&root, matrix)?;
        root.present().map_err(draw_err)?;
    }
    encode_png(buf, size)
}

/// Pixel geometry of the confusion chart, worked out before drawing because the canvas
/// size depends on the class count and on how wide the class names render.
struct ConfusionLayout {
    labels: Vec<String>,
    cell: u32,
    grid_x: i32,
    grid_y: i32,
    label_size: f64,
    count_size: f64,
    rotate_columns: bool,
    column_label_depth: u32,
    width: u32,
    height: u32,
}

const MARGIN: u32 = 16;
const TITLE_H: u32 = 56;
const AXIS_TITLE_SIZE: f64 = 17.0;
const BAR_GAP: u32 = 24;
const BAR_W: u32 = 18;

impl ConfusionLayout {
    fn new(title: &str, classes: &[String], matrix: &[Vec<u64>]) -> Self {
        let n = classes.len() as u32;
        // Big cells for a handful of classes, down to 24 px for a few dozen, and only
        // below that for class counts where a per-cell label is hopeless anyway.
        let cell = (640 / n).clamp(24, 140).min((MAX_GRID_PX / n).max(1));
        let grid = cell * n;
        let labels: Vec<String> = classes.iter().map(|c| truncate_label(c)).collect();
        let label_size = (f64::from(cell) * 0.45).clamp(9.0, 15.0);
        let label_w = labels
            .iter()
            .map(|l| text_width(l, label_size))
            .max()
            .unwrap_or(0);
        let label_h = label_size.ceil() as u32;
        let rotate_columns = label_w + 6 > cell;
        let column_label_depth = if rotate_columns { label_w } else { label_h };

        // The widest count must fit its cell; shrink the font rather than overflow.
        let widest = matrix
            .iter()
            .flatten()
            .copied()
            .max()
            .unwrap_or(0)
            .to_string();
        let base = (f64::from(cell) * 0.32).clamp(8.0, 22.0);
        let count_size = fitted_size(&widest, base, cell.saturating_sub(4));

        let axis_title_h = AXIS_TITLE_SIZE.ceil() as u32 + 4;
        let grid_x = MARGIN + axis_title_h + 10 + label_w + 8;
        let grid_y = TITLE_H;
        let bar_labels_w = text_width("1.0", 13.0) + 8 + axis_title_h + 8;
        let width = (grid_x + grid + BAR_GAP + BAR_W + bar_labels_w + MARGIN)
            .max(text_width(title, 24.0).min(1600) + 2 * MARGIN);
        let height = grid_y + grid + 8 + column_label_depth + 12 + axis_title_h + MARGIN;
        ConfusionLayout {
            labels,
            cell,
            grid_x: grid_x as i32,
            grid_y: grid_y as i32,
            label_size,
            count_size,
            rotate_columns,
            column_label_depth,
            width,
            height,
        }
    }

    fn draw(
        &self,
        root: &DrawingArea<BitMapBackend<'_>, Shift>,
        matrix: &[Vec<u64>],
    ) -> Result<(), String> {
        let n = self.labels.len() as i32;
        let cell = self.cell as i32;
        let grid = cell * n;
        let (gx, gy) = (self.grid_x, self.grid_y);
        let draw_counts = self.count_size >= 6.0 && cell >= 12;
        let draw_labels = cell >= 8;

        for (i, row) in matrix.iter().enumerate() {
            // Summed as f64: u64 counts could overflow a u64 sum, and precision loss
            // at that scale is invisible in a colour.
            let total: f64 = row.iter().map(|&c| c as f64).sum();
            for (j, &count) in row.iter().enumerate() {
                let frac = if total > 0.0 {
                    count as f64 / total
                } else {
                    0.0
                };
                let bg = shade(frac);
                let x0 = gx + j as i32 * cell;
                let y0 = gy + i as i32 * cell;
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cell, y0 + cell)],
                    bg.filled(),
                ))
                .map_err(draw_err)?;
                if cell >= 6 {
                    root.draw(&Rectangle::new(
                        [(x0, y0), (x0 + cell, y0 + cell)],
                        RGBColor(225, 225, 225).stroke_width(1),
                    ))
                    .map_err(draw_err)?;
                }
                if draw_counts {
                    let style = coloured_font(self.count_size, text_color_on(bg))
                        .pos(Pos::new(HPos::Center, VPos::Center));
                    root.draw(&Text::new(
                        count.to_string(),
                        (x0 + cell / 2, y0 + cell / 2),
                        style,
                    ))
                    .map_err(draw_err)?;
                }
            }
        }
        root.draw(&Rectangle::new(
            [(gx, gy), (gx + grid, gy + grid)],
            RGBColor(90, 90, 90).stroke_width(1),
        ))
        .map_err(draw_err)?;

        if draw_labels {
            for (k, label) in self.labels.iter().enumerate() {
                let centre = k as i32 * cell + cell / 2;
                let row_style = font(self.label_size).pos(Pos::new(HPos::Right, VPos::Center));
                root.draw(&Text::new(label.clone(), (gx - 8, gy + centre), row_style))
                    .map_err(draw_err)?;
                let col_style = if self.rotate_columns {
                    // Read bottom to top, ending just under the grid.
                    font(self.label_size)
                        .transform(FontTransform::Rotate270)
                        .pos(Pos::new(HPos::Right, VPos::Center))
                } else {
                    font(self.label_size).pos(Pos::new(HPos::Center, VPos::Top))
                };
                root.draw(&Text::new(
                    label.clone(),
                    (gx + centre, gy + grid + 8),
                    col_style,
                ))
                .map_err(draw_err)?;
            }
        }

        let below = gy + grid + 8 + self.column_label_depth as i32 + 12;
        root.draw(&Text::new(
            "predicted",
            (gx + grid / 2, below),
            font(AXIS_TITLE_SIZE).pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(draw_err)?;
        root.draw(&Text::new(
            "true",
            (MARGIN as i32 + AXIS_TITLE_SIZE as i32 / 2, gy + grid / 2),
            font(AXIS_TITLE_SIZE)
                .transform(FontTransform::Rotate270)
                .pos(Pos::new(HPos::Center, VPos::Center)),
        ))
        .map_err(draw_err)?;

        self.draw_colour_bar(root, gx + grid + BAR_GAP as i32, gy, grid)
    }

    /// The scale says the shade is a row fraction, which raw counts in cells do not.
    fn draw_colour_bar(
        &self,
        root: &DrawingArea<BitMapBackend<'_>, Shift>,
        x: i32,
        y: i32,
        height: i32,
    ) -> Result<(), String> {
        let w = BAR_W as i32;
        let steps = height.max(1);
        for k in 0..steps {
            let frac = 1.0 - f64::from(k) / f64::from((steps - 1).max(1));
            root.draw(&Rectangle::new(
                [(x, y + k), (x + w, y + k + 1)],
                shade(frac).filled(),
            ))
            .map_err(draw_err)?;
        }
        root.draw(&Rectangle::new(
            [(x, y), (x + w, y + height)],
            RGBColor(90, 90, 90).stroke_width(1),
        ))
        .map_err(draw_err)?;
        for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
            let ty = y + ((1.0 - tick) * f64::from(height - 1)).round() as i32;
            root.draw(&PathElement::new(vec![(x + w, ty), (x + w + 4, ty)], BLACK))
                .map_err(draw_err)?;
            let style = font(13.0).pos(Pos::new(HPos::Left, VPos::Center));
            root.draw(&Text::new(format!("{tick:.2}"), (x + w + 7, ty), style))
                .map_err(draw_err)?;
        }
        let label_x = x + w + 7 + text_width("0.00", 13.0) as i32 + 14;
        root.draw(&Text::new(
            "fraction of row",
            (label_x, y + height / 2),
            font(14.0)
                .transform(FontTransform::Rotate270)
                .pos(Pos::new(HPos::Center, VPos::Center)),
        ))
        .map_err(draw_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::RgbImage;

    fn decode(png: &[u8]) -> RgbImage {
        image::load_from_memory(png).expect("valid PNG").to_rgb8()
    }

    fn assert_not_flat(img: &RgbImage) {
        let first = img.get_pixel(0, 0);
        assert!(img.pixels().any(|p| p != first), "image is a single colour");
    }

    /// Text is the only dark ink near the top of both charts, so dark pixels there
    /// prove the embedded font really rendered.
    fn assert_title_inked(img: &RgbImage) {
        let dark = (0..img.width())
            .flat_map(|x| (0..40).map(move |y| (x, y)))
            .filter(|&(x, y)| {
                let p = img.get_pixel(x, y);
                p.0.iter().all(|&c| c < 90)
            })
            .count();
        assert!(dark > 50, "only {dark} dark pixels in the title band");
    }

    fn run(n: usize, with_val: bool) -> Vec<EpochPoint> {
        (1..=n)
            .map(|e| {
                let t = e as f64;
                EpochPoint {
                    epoch: e,
                    train_loss: 2.0 / t,
                    train_acc: 1.0 - 0.8 / t,
                    val_loss: with_val.then_some(2.2 / t + 0.02 * t),
                    val_acc: with_val.then_some(0.95 - 0.8 / t),
                }
            })
            .collect()
    }

    fn check_curves(png: &[u8]) {
        let img = decode(png);
        assert_eq!(img.dimensions(), CURVES_SIZE);
        assert_not_flat(&img);
        assert_title_inked(&img);
    }

    #[test]
    fn curves_render_with_best_marker() {
        check_curves(&curves_png("vgg16 fine-tune", &run(12, true), Some(7), Some(6)).unwrap());
    }

    #[test]
    fn curves_single_epoch() {
        check_curves(&curves_png("one epoch", &run(1, true), Some(1), None).unwrap());
    }

    #[test]
    fn curves_without_validation() {
        check_curves(&curves_png("no val", &run(5, false), None, None).unwrap());
    }

    #[test]
    fn curves_skip_non_finite_values() {
        let mut pts = run(6, true);
        pts[2].train_loss = f64::NAN;
        pts[3].val_loss = Some(f64::INFINITY);
        pts[4].train_acc = f64::NEG_INFINITY;
        pts[5].train_loss = f64::MAX;
        check_curves(&curves_png("diverged", &pts, Some(2), None).unwrap());
    }

    #[test]
    fn curves_all_non_finite_and_flat() {
        let mut pts = run(4, true);
        for p in &mut pts {
            p.train_loss = f64::NAN;
            p.val_loss = Some(0.5);
            p.train_acc = 0.25;
            p.val_acc = None;
        }
        check_curves(&curves_png("flat", &pts, None, None).unwrap());
    }

    #[test]
    fn curves_odd_input_does_not_panic() {
        // Unsorted epochs, epoch 0, best epoch outside the run, accuracy in percent.
        let mut pts = run(3, true);
        pts.reverse();
        pts[0].epoch = 0;
        pts[1].train_acc = 87.0;
        check_curves(&curves_png("odd input", &pts, Some(99), None).unwrap());
    }

    #[test]
    fn tick_decimals_follow_the_step() {
        assert_eq!(tick_decimals(2.2, 8), 1); // step 0.5
        assert_eq!(tick_decimals(0.4, 8), 1); // step 0.1
        assert_eq!(tick_decimals(40.0, 8), 0); // step 10
        assert_eq!(tick_decimals(0.004, 8), 3); // step 0.001
        assert_eq!(tick_decimals(f64::NAN, 8), 2);
    }

    #[test]
    fn curves_reject_empty_input() {
        assert!(
            curves_png("empty", &[], None, None)
                .unwrap_err()
                .contains("no epochs")
        );
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("class_{i}")).collect()
    }

    fn check_confusion(png: &[u8]) -> RgbImage {
        let img = decode(png);
        assert_not_flat(&img);
        assert_title_inked(&img);
        img
    }

    #[test]
    fn confusion_two_classes() {
        let m = vec![vec![90, 10], vec![3, 97]];
        let classes = ["cat".to_string(), "dog".to_string()];
        let png = confusion_png("cats vs dogs", &classes, &m).unwrap();
        let img = check_confusion(&png);
        let layout = ConfusionLayout::new("cats vs dogs", &classes, &m);
        assert_eq!(img.dimensions(), (layout.width, layout.height));
        // Sample near the cell corner, away from the count text: the 90% cell must be
        // darker than the 10% cell next to it.
        let at = |i: u32, j: u32| {
            let x = layout.grid_x as u32 + j * layout.cell + 4;
            let y = layout.grid_y as u32 + i * layout.cell + 4;
            img.get_pixel(x, y)
                .0
                .iter()
                .map(|&c| u32::from(c))
                .sum::<u32>()
        };
        assert!(at(0, 0) < at(0, 1));
    }

    #[test]
    fn confusion_thirty_classes_with_long_names() {
        let mut classes = names(30);
        classes[3] = "a_really_quite_extraordinarily_long_class_name".into();
        let m: Vec<Vec<u64>> = (0..30)
            .map(|i| {
                (0..30)
                    .map(|j| if i == j { 12345 } else { (i * j % 7) as u64 })
                    .collect()
            })
            .collect();
        check_confusion(&confusion_png("thirty", &classes, &m).unwrap());
    }

    #[test]
    fn confusion_zero_row() {
        let m = vec![vec![5, 1, 0], vec![0, 0, 0], vec![2, 0, 7]];
        check_confusion(&confusion_png("zero row", &names(3), &m).unwrap());
    }

    #[test]
    fn confusion_rejects_bad_shapes() {
        let err = confusion_png("t", &names(2), &[vec![1, 2]]).unwrap_err();
        assert!(err.contains("1 rows but there are 2 classes"), "{err}");
        let err = confusion_png("t", &names(2), &[vec![1, 2], vec![3]]).unwrap_err();
        assert!(err.contains("row 1 has 1 columns"), "{err}");
        assert!(
            confusion_png("t", &[], &[])
                .unwrap_err()
                .contains("no classes")
        );
    }

    /// Writes sample charts for a person to look at: `cargo test -- --ignored`.
    #[test]
    #[ignore]
    fn write_samples() {
        let dir = std::path::Path::new("/tmp/plots-sample");
        std::fs::create_dir_all(dir).unwrap();
        let mut pts = run(20, true);
        pts[9].val_loss = Some(f64::NAN);
        std::fs::write(
            dir.join("curves.png"),
            curves_png("vgg16 on flowers: fine-tune", &pts, Some(8), None).unwrap(),
        )
        .unwrap();
        let m = vec![vec![48, 2, 0], vec![5, 40, 5], vec![0, 0, 0]];
        let classes = vec![
            "daisy".into(),
            "dandelion".into(),
            "a_really_quite_long_class_name".into(),
        ];
        std::fs::write(
            dir.join("confusion.png"),
            confusion_png("vgg16 on flowers: validation", &classes, &m).unwrap(),
        )
        .unwrap();
        let mut classes = names(30);
        classes[3] = "a_really_quite_extraordinarily_long_class_name".into();
        let m: Vec<Vec<u64>> = (0..30)
            .map(|i| {
                (0..30)
                    .map(|j| {
                        if i == j {
                            40 + i as u64
                        } else {
                            (i * j % 7) as u64
                        }
                    })
                    .collect()
            })
            .collect();
        std::fs::write(
            dir.join("confusion30.png"),
            confusion_png("thirty classes", &classes, &m).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.join("curves1.png"),
            curves_png("one epoch, no val", &run(1, false), Some(1), None).unwrap(),
        )
        .unwrap();
    }
}
