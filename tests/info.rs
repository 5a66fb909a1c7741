//! `keel info` end to end: the text for people and the JSON for scripts describe the same
//! machine, and what they report is usable (sane caches, valid block sizes per kernel).

use std::process::{Command, Output};

use serde_json::Value;

fn keel(args: &[&str], keel_isa: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
    cmd.args(args)
        .env("KEEL_HOME", std::env::temp_dir().join("keel-no-cache"))
        .env_remove("KEEL_ISA");
    if let Some(v) = keel_isa {
        cmd.env("KEEL_ISA", v);
    }
    cmd.output().unwrap()
}

fn stdout(out: &Output) -> String {
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(
        out.status.success(),
        "exit {:?}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn json(args: &[&str], keel_isa: Option<&str>) -> Value {
    let text = stdout(&keel(args, keel_isa));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn usize_at(v: &Value, path: &str) -> usize {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no number at {path} in {v}")) as usize
}

#[test]
fn json_reports_the_machine_and_valid_blocking_for_every_kernel() {
    let v = json(&["--threads", "1", "info", "--format", "json"], None);
    for level in ["l1d", "l2", "l3"] {
        for field in ["size", "ways", "line", "shared_by"] {
            assert!(
                usize_at(&v, &format!("/machine/{level}/{field}")) > 0,
                "{level}.{field}"
            );
        }
        let source = v.pointer(&format!("/machine/{level}/source")).unwrap();
        assert!(
            ["sysfs", "cpuid", "default"].contains(&source.as_str().unwrap()),
            "{source}"
        );
    }
    assert!(usize_at(&v, "/machine/l1d/size") <= usize_at(&v, "/machine/l2/size"));
    assert!(usize_at(&v, "/machine/threads") >= 1);
    for flag in ["avx2", "avx512f", "avx512_bf16", "amx_tile", "os_amx"] {
        assert!(
            v.pointer(&format!("/machine/features/{flag}"))
                .unwrap()
                .is_boolean()
        );
    }
    let id = v["id"].as_str().unwrap();
    assert!(
        !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "{id}"
    );
    assert!(v["describe"].as_str().unwrap().contains("L1d "));
    // The global --threads sizes the pool info reports.
    assert_eq!(usize_at(&v, "/threads"), 1);
    assert_eq!(v["keel_isa"], Value::Null);
    assert_eq!(v["kernel"], v["best_kernel"], "no cap: the best kernel");
    let blocking = v["blocking"].as_array().unwrap();
    assert_eq!(
        blocking[0]["isa"], "portable",
        "every CPU runs the portable kernel"
    );
    for b in blocking {
        let (mr, nr) = (usize_at(b, "/mr"), usize_at(b, "/nr"));
        let (mc, kc, nc) = (usize_at(b, "/mc"), usize_at(b, "/kc"), usize_at(b, "/nc"));
        assert!(mc >= mr && mc.is_multiple_of(mr), "{b}");
        assert!(kc >= 64 && kc.is_multiple_of(8), "{b}");
        assert!(nc >= nr && nc.is_multiple_of(nr), "{b}");
        assert_eq!(usize_at(b, "/a_panel_bytes"), mr * kc * 4, "{b}");
    }
    let amx = v["amx_bf16"].as_str().unwrap();
    assert!(amx == "usable" || amx.starts_with("not usable: "), "{amx}");
    // --precision bf16's rung: AMX exactly where it is usable.
    let bf16 = v["bf16"].as_str().unwrap();
    match bf16 {
        "amxbf16" => assert_eq!(amx, "usable"),
        "avx512bf16" => assert_ne!(amx, "usable"),
        other => assert!(other.starts_with("not available: "), "{other}"),
    }
    // vdpbf16ps's measured rate against f32's: given exactly where bf16 runs on it.
    let ratio = &v["bf16_dot_over_f32"];
    if bf16 == "avx512bf16" {
        let r = ratio.as_f64().unwrap();
        assert!(r.is_finite() && r > 0.1 && r < 10.0, "{r}");
    } else {
        assert_eq!(*ratio, Value::Null, "{bf16}");
    }
    let best = v["best_kernel"].as_str().unwrap();
    let last = blocking.last().unwrap()["isa"].as_str().unwrap();
    assert!(
        best == last || (best == "packed" && last == "portable"),
        "{best} vs {last}"
    );
}

#[test]
fn text_shows_the_same_machine_and_each_section() {
    let text = stdout(&keel(&["info"], None));
    let v = json(&["info", "--format", "json"], None);
    let first = text.lines().next().unwrap();
    assert_eq!(
        first.strip_prefix("cpu").map(str::trim),
        v["describe"].as_str(),
        "{text}"
    );
    for needle in [
        "cpu id",
        "L1d",
        "L2",
        "L3",
        "source",
        "isa",
        "avx2 ",
        "fma pipes",
        "gemm",
        "KEEL_ISA   not set",
        "threads",
        "blocking",
        "portable",
        "tuning",
    ] {
        assert!(text.contains(needle), "'{needle}' missing from:\n{text}");
    }
    let amx = format!("AMX-BF16   {}", v["amx_bf16"].as_str().unwrap());
    assert!(text.contains(&amx), "'{amx}' missing from:\n{text}");
    let bf16 = format!("bf16       {} ", v["bf16"].as_str().unwrap());
    assert!(text.contains(&bf16), "'{bf16}' missing from:\n{text}");
    if v["bf16_dot_over_f32"].is_f64() {
        assert!(text.contains("vdpbf16ps runs at "), "{text}");
    }
}

#[test]
fn keel_isa_caps_the_kernel_and_a_bad_one_is_reported_not_fatal() {
    let v = json(&["info", "--format", "json"], Some("portable"));
    assert_eq!(v["kernel"], "packed");
    assert_eq!(v["keel_isa"], "portable");
    assert_eq!(v["keel_isa_error"], Value::Null);

    let v = json(&["info", "--format", "json"], Some("sse9"));
    assert_eq!(v["keel_isa"], "sse9");
    let e = v["keel_isa_error"].as_str().unwrap();
    assert!(e.contains("KEEL_ISA=sse9"), "{e}");
    let text = stdout(&keel(&["info"], Some("sse9")));
    assert!(text.contains("KEEL_ISA=sse9"), "{text}");
}

#[test]
fn an_unknown_format_is_refused() {
    let out = keel(&["info", "--format", "yaml"], None);
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("yaml"));
}
