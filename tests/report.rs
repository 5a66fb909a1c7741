//! The HTML report opens in a real browser with every picture decoded: headless Chromium
//! (Debian's `chromium`; `$KEEL_CHROMIUM` names another) loads the file from disk, and the
//! page's own count of decoded images is read back from the DOM; a screenshot is taken too.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use keel::viz::report::{Figure, Report, Section};

/// Headless Chromium, or None with a printed reason.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KEEL_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    common::skip(
        "no Chromium (install Debian's chromium, or set KEEL_CHROMIUM): the browser check of the HTML report did not run",
    );
    None
}

/// Run the browser headless on `page` with `extra` arguments; its stdout.
fn headless(browser: &Path, page: &Path, extra: &[&str]) -> String {
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .args(["--virtual-time-budget=5000", "--window-size=1000,800"])
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("the browser runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn png(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 7) as u8 ^ seed, (y * 5) as u8, seed.wrapping_mul(3)])
    });
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .unwrap();
    bytes
}

fn report(figures: Vec<Figure>) -> Report {
    Report {
        title: "A test report".into(),
        intro: "Two sections of pictures.".into(),
        sections: vec![Section {
            heading: "Pictures".into(),
            text: "Each is embedded.".into(),
            figures,
        }],
    }
}

#[test]
fn every_image_decodes_in_a_headless_browser() {
    let Some(browser) = chromium() else { return };
    let dir = common::temp_dir("report");
    let good = dir.join("good.html");
    let figures = vec![
        Figure {
            caption: "one".into(),
            png: png(40, 30, 1),
        },
        Figure {
            caption: "two".into(),
            png: png(17, 63, 2),
        },
    ];
    std::fs::write(&good, report(figures).to_html()).unwrap();
    let dom = headless(&browser, &good, &["--dump-dom"]);
    assert!(dom.contains("data-decoded=\"2/2\""), "{dom}");

    // The check can fail: a picture that is not a PNG shows as 1 of 2.
    let bad = dir.join("bad.html");
    let figures = vec![
        Figure {
            caption: "fine".into(),
            png: png(8, 8, 3),
        },
        Figure {
            caption: "broken".into(),
            png: b"not a png".to_vec(),
        },
    ];
    std::fs::write(&bad, report(figures).to_html()).unwrap();
    let dom = headless(&browser, &bad, &["--dump-dom"]);
    assert!(dom.contains("data-decoded=\"1/2\""), "{dom}");

    // And a screenshot of the good page, a real PNG of the window's size.
    let shot = dir.join("shot.png");
    headless(
        &browser,
        &good,
        &[&format!("--screenshot={}", shot.display())],
    );
    let img = image::open(&shot).expect("the screenshot is a PNG");
    assert_eq!((img.width(), img.height()), (1000, 800));
}

/// `keel visualize report` on a trained (micro) model: one HTML file whose every picture the
/// browser decodes (the input, five blocks' maps, Grad-CAM, saliency), and a clean refusal
/// that leaves no file.
#[test]
fn visualize_report_opens_in_a_headless_browser() {
    let home = common::temp_dir("visualize-report");
    let model = common::run::trained_model(&home, &[]);
    let photo = home.join("photos/red/r00.png");
    let page = home.join("report.html");
    let out = common::run::keel_in(
        &home,
        &[
            "visualize",
            "report",
            common::run::s(&model),
            common::run::s(&photo),
            "-o",
            common::run::s(&page),
        ],
    );
    common::run::assert_ok(&out);
    let html = std::fs::read_to_string(&page).unwrap();
    assert_eq!(
        html.matches("<img ").count(),
        8,
        "input, 5 blocks, Grad-CAM, saliency"
    );
    assert!(html.contains("Grad-CAM of ") && html.contains("block5_conv3"));
    assert!(!html.contains("http"), "nothing fetched");

    // A missing image is refused, naming it, and writes nothing.
    let none = home.join("none.html");
    let out = common::run::keel_in(
        &home,
        &[
            "visualize",
            "report",
            common::run::s(&model),
            common::run::s(&home.join("missing.png")),
            "-o",
            common::run::s(&none),
        ],
    );
    common::run::assert_fails_with(&out, &["missing.png"]);
    assert!(!none.exists());

    let Some(browser) = chromium() else { return };
    let dom = headless(&browser, &page, &["--dump-dom"]);
    assert!(dom.contains("data-decoded=\"8/8\""), "{dom}");
    let shot = home.join("shot.png");
    headless(
        &browser,
        &page,
        &[&format!("--screenshot={}", shot.display())],
    );
    assert!(image::open(&shot).is_ok(), "the screenshot is a PNG");
}
