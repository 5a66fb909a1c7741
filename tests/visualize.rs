//! `keel visualize maps` and `keel visualize filters` on the micro VGG16 (conv widths 2, 3, 4,
//! 5, 6): pictures of the size their layout promises (which is how the tile count is checked),
//! no NaN where a channel is flat, the library's normalisation, BGR order and gradient ascent,
//! and every bad input refused with exit 1 and no file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::run::{assert_fails_with, assert_ok, keel_in, s, weights, write_photo};
use keel::cpu::CpuReference;
use keel::nn::Vgg;
use keel::tensor::Tensor;
use keel::viz::filters::{self, AscentOptions};
use keel::viz::maps::{self, GridLayout, LABEL_H, MARGIN, TITLE_H};

fn visualize(home: &Path, args: &[&str]) -> Output {
    let mut all = vec!["visualize"];
    all.extend_from_slice(args);
    keel_in(home, &all)
}

fn decode(path: &Path) -> image::RgbImage {
    image::open(path).expect("a readable PNG").to_rgb8()
}

/// A 40x40 photo in `home`.
fn photo(home: &Path) -> PathBuf {
    let p = home.join("photo.png");
    write_photo(&p, [200, 120, 40], 7);
    p
}

fn micro() -> Vgg {
    let set = keel::io::load_weights(&weights()).unwrap();
    let id = set.identity().clone();
    Vgg::new(id.base_config([40, 40]), set).unwrap()
}

#[test]
fn maps_grid_has_one_tile_per_channel() {
    let home = common::temp_dir("viz-maps");
    let img = photo(&home);
    let out = home.join("maps.png");
    let w = weights();
    // block3_conv1 of a 40x40 input: 10x10 maps, upscaled 10x to 100x100 tiles; 4 channels.
    let base = [
        "maps",
        s(&img),
        "--weights",
        s(&w),
        "--layer",
        "block3_conv1",
        "--input",
        "40x40",
        "-o",
        s(&out),
    ];
    assert_ok(&visualize(&home, &base));
    let got = decode(&out);
    let want = GridLayout::new(4, 8, 100, 100, true);
    assert_eq!(got.dimensions(), (want.width, want.height));

    // Three channels in two columns: two rows.
    let mut args = base.to_vec();
    args.extend(["--channels", "0..2,3", "--columns", "2"]);
    assert_ok(&visualize(&home, &args));
    let want = GridLayout::new(3, 2, 100, 100, true);
    assert_eq!((want.columns, want.rows), (2, 2));
    assert_eq!(decode(&out).dimensions(), (want.width, want.height));

    // A real pattern: the first tile is not a single colour.
    let img = decode(&out);
    let tile: Vec<_> = (0..100)
        .flat_map(|y| (0..100).map(move |x| (MARGIN + x, TITLE_H + LABEL_H + y)))
        .map(|(x, y)| *img.get_pixel(x, y))
        .collect();
    assert!(tile.iter().any(|p| *p != tile[0]), "the first map is flat");
}

#[test]
fn flat_channels_draw_without_nan() {
    let home = common::temp_dir("viz-flat");
    let img = home.join("solid.png");
    image::RgbImage::from_pixel(40, 40, image::Rgb([90, 160, 30]))
        .save(&img)
        .unwrap();
    let out = home.join("maps.png");
    let w = weights();
    // The input layer of a solid photo: three constant channels, 40x40, upscaled 3x.
    let args = [
        "maps",
        s(&img),
        "--weights",
        s(&w),
        "--layer",
        "input_1",
        "--input",
        "40x40",
        "-o",
        s(&out),
    ];
    assert_ok(&visualize(&home, &args));
    let got = decode(&out);
    let want = GridLayout::new(3, 8, 120, 120, true);
    assert_eq!(got.dimensions(), (want.width, want.height));
    // A flat channel is 0 everywhere: the low end of the scale (white), not garbage.
    let centre = got.get_pixel(MARGIN + 60, TITLE_H + LABEL_H + 60);
    assert_eq!(centre.0, [255, 255, 255]);

    let t = Tensor::from_vec([1, 2, 2, 2], &[1.0, 7.0, 2.0, 7.0, 3.0, 7.0, 5.0, 7.0]).unwrap();
    let m = maps::channel_maps(&t, &[0, 1]).unwrap();
    assert_eq!(m[0].values, [0.0, 0.25, 0.5, 1.0]);
    assert_eq!((m[0].min, m[0].max), (1.0, 5.0));
    assert!(m[1].is_flat() && m[1].values.iter().all(|&v| v == 0.0));
    let (v, lo, hi) = maps::normalize(&[f32::NAN, 2.0, f32::INFINITY, 4.0]);
    assert_eq!(v, [0.0, 0.0, 0.0, 1.0]);
    assert_eq!((lo, hi), (2.0, 4.0));
    assert!(maps::normalize(&[f32::NAN; 3]).0.iter().all(|v| *v == 0.0));
}

#[test]
fn channel_lists_parse_or_say_why_not() {
    assert_eq!(maps::parse_channels(None, 4, 64).unwrap(), [0, 1, 2, 3]);
    assert_eq!(maps::parse_channels(None, 512, 64).unwrap().len(), 64);
    assert_eq!(
        maps::parse_channels(Some("0..2, 5"), 8, 64).unwrap(),
        [0, 1, 5]
    );
    for (bad, says) in [
        ("5..2", "is empty"),
        ("3..3", "is empty"),
        ("x..3", "not a channel"),
        ("", "not a channel"),
        ("1,,2", "not a channel"),
        ("0..9", "outside"),
        ("8", "outside"),
    ] {
        let err = maps::parse_channels(Some(bad), 8, 64)
            .unwrap_err()
            .to_string();
        assert!(err.contains(says), "{bad}: {err}");
    }
}

#[test]
fn first_layer_filters_are_rgb_tiles() {
    let home = common::temp_dir("viz-filters1");
    let out = home.join("filters.png");
    let w = weights();
    let args = [
        "filters",
        "--weights",
        s(&w),
        "--layer",
        "block1_conv1",
        "-o",
        s(&out),
    ];
    assert_ok(&visualize(&home, &args));
    // Two 3x3 filters, upscaled 32x.
    let want = GridLayout::new(2, 8, 96, 96, false);
    assert_eq!(decode(&out).dimensions(), (want.width, want.height));

    // Filter 0 reads only input channel 0 (blue, in caffe's BGR order), filter 1 only channel
    // 2 (red), negatively: blue stays blue and red stays red once shown as RGB.
    let mut k = vec![0f32; 3 * 3 * 3 * 2];
    for p in 0..9 {
        k[(p * 3) * 2] = 1.0;
        k[(p * 3 + 2) * 2 + 1] = -1.0;
    }
    let dims = [3, 3, 3, 2];
    let blue = filters::kernel_rgb(&k, dims, 0).unwrap();
    let red = filters::kernel_rgb(&k, dims, 1).unwrap();
    assert_eq!(&blue[..3], &[128, 128, 255]);
    assert_eq!(&red[..3], &[0, 128, 128]);
    let kernel = Tensor::from_vec(dims, &k).unwrap();
    let tiles = filters::first_layer_tiles(&kernel, &[1]).unwrap();
    assert_eq!((tiles[0].width, tiles[0].height), (96, 96));
    assert_eq!(&tiles[0].rgb[..3], &[0, 128, 128]);
    assert!(filters::kernel_rgb(&k, dims, 2).is_err());
}

#[test]
fn deeper_filters_are_ascent_patterns() {
    let home = common::temp_dir("viz-filters2");
    let out = home.join("filters.png");
    let w = weights();
    let args = [
        "filters",
        "--weights",
        s(&w),
        "--layer",
        "block2_conv1",
        "--steps",
        "3",
        "--input",
        "32x32",
        "--columns",
        "2",
        "-o",
        s(&out),
    ];
    assert_ok(&visualize(&home, &args));
    // Three channels of 32x32 patterns, upscaled 3x, two to a row.
    let want = GridLayout::new(3, 2, 96, 96, false);
    assert_eq!(decode(&out).dimensions(), (want.width, want.height));
}

#[test]
fn gradient_ascent_raises_the_channel_mean() {
    let vgg = micro();
    let opts = AscentOptions {
        steps: 8,
        seed: 3,
        input: [32, 32],
        ..AscentOptions::default()
    };
    let channels = [0, 1, 2, 3];
    let a = filters::ascend(&vgg, &CpuReference, "block3_conv1", &channels, &opts).unwrap();
    assert_eq!(a.means.len(), 9);
    assert_eq!(a.patterns.dims(), [4, 32, 32, 3]);
    let (first, last) = (&a.means[0], &a.means[8]);
    // The ascent climbs the mean before the ReLU, so every channel has a gradient, even one
    // that is negative everywhere on the starting noise, and every channel must rise.
    for i in 0..channels.len() {
        assert!(
            last[i] > first[i],
            "channel {i}: {} -> {}",
            first[i],
            last[i]
        );
    }
    // Seeded: the same run finds the same patterns.
    let b = filters::ascend(&vgg, &CpuReference, "block3_conv1", &channels, &opts).unwrap();
    assert_eq!(a.patterns.data(), b.patterns.data());
    assert!(a.patterns.data().iter().all(|v| v.is_finite()));
    let tiles = filters::pattern_tiles(&a, &channels).unwrap();
    assert_eq!(tiles.len(), 4);
}

#[test]
fn bad_inputs_fail_cleanly_and_write_nothing() {
    let home = common::temp_dir("viz-bad");
    let img = photo(&home);
    let out = home.join("out.png");
    let w = weights();
    let broken = home.join("broken.png");
    std::fs::write(&broken, b"not a png at all").unwrap();
    let maps = |layer: &str, extra: &[&str], image: &Path, o: &Path| {
        let mut args = vec![
            "maps",
            s(image),
            "--weights",
            s(&w),
            "--layer",
            layer,
            "--input",
            "40x40",
            "-o",
            s(o),
        ];
        args.extend_from_slice(extra);
        visualize(&home, &args)
    };
    let cases: Vec<(Output, Vec<&str>)> = vec![
        (
            maps("block9_conv1", &[], &img, &out),
            vec!["no layer named 'block9_conv1'", "block3_conv1"],
        ),
        (
            maps("fc1", &[], &img, &out),
            vec!["fc1", "top", "block5_pool"],
        ),
        (
            maps("block3_conv1", &["--channels", "5..2"], &img, &out),
            vec!["5..2", "is empty"],
        ),
        (
            maps("block3_conv1", &["--channels", "x..3"], &img, &out),
            vec!["x..3", "not a channel"],
        ),
        (
            maps("block3_conv1", &["--channels", "0..9"], &img, &out),
            vec!["outside", "4 channels"],
        ),
        (
            maps("block3_conv1", &["--columns", "0"], &img, &out),
            vec!["--columns"],
        ),
        (
            maps("block3_conv1", &[], &home.join("missing.png"), &out),
            vec!["missing.png"],
        ),
        (
            maps("block3_conv1", &[], &broken, &out),
            vec!["broken.png", "not a readable image"],
        ),
        (
            visualize(
                &home,
                &[
                    "filters",
                    "--weights",
                    s(&w),
                    "--layer",
                    "block1_pool",
                    "-o",
                    s(&out),
                ],
            ),
            vec!["block1_pool", "no filters", "block1_conv1"],
        ),
        (
            visualize(
                &home,
                &[
                    "filters",
                    "--weights",
                    s(&w),
                    "--layer",
                    "block2_conv1",
                    "--channels",
                    "3",
                    "-o",
                    s(&out),
                ],
            ),
            vec!["outside", "3 channels"],
        ),
        (
            visualize(
                &home,
                &[
                    "filters",
                    "--weights",
                    s(&w),
                    "--layer",
                    "nope",
                    "-o",
                    s(&out),
                ],
            ),
            vec!["no layer named 'nope'"],
        ),
    ];
    for (result, needles) in &cases {
        assert_eq!(result.status.code(), Some(1), "{needles:?}");
        assert_fails_with(result, needles);
        assert!(!out.exists(), "{needles:?} left {}", out.display());
    }
    // An output path that is a directory: refused, and nothing written inside or beside it.
    let dir = home.join("a_dir");
    std::fs::create_dir(&dir).unwrap();
    let before = std::fs::read_dir(&home).unwrap().count();
    let r = maps("block3_conv1", &[], &img, &dir);
    assert_fails_with(&r, &["a_dir", "is a directory"]);
    assert!(dir.is_dir() && std::fs::read_dir(&dir).unwrap().next().is_none());
    assert_eq!(std::fs::read_dir(&home).unwrap().count(), before);
}
