//! A `model.summary()`-style table, with what Keras leaves out: FLOPs and activation memory.

use std::fmt::Write;

use super::arch::{LayerSpec, VggConfig};

/// `1234567` -> `1,234,567`, as Keras prints parameter counts.
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Bytes in binary units ("12.25 MiB").
fn bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", units[u])
    }
}

/// FLOPs with an SI suffix ("173.41 M").
fn flops(n: u64) -> String {
    match n {
        0 => String::new(),
        n if n >= 1_000_000_000 => format!("{:.2} G", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2} M", n as f64 / 1e6),
        n => format!("{:.2} K", n as f64 / 1e3),
    }
}

/// The table for `config`, per image (batch dimension shown as `None`, as Keras does).
pub fn summary_table(config: &VggConfig) -> String {
    let layers = config.layers();
    let rule = |c: char| c.to_string().repeat(104);
    let mut s = String::new();
    let _ = writeln!(s, "Model: \"{}\"", config.model_name());
    let _ = writeln!(s, "{}", rule('_'));
    let _ = writeln!(
        s,
        " {:<36}{:<26}{:>14}{:>14}{:>14}",
        "Layer (type)", "Output Shape", "Param #", "FLOPs", "Activation"
    );
    let _ = writeln!(s, "{}", rule('='));
    let act_bytes = |l: &LayerSpec| 4 * l.output.numel() as u64;
    for l in &layers {
        let dims: Vec<String> = l.output.dims().iter().map(usize::to_string).collect();
        let shape = format!("(None, {})", dims.join(", "));
        let _ = writeln!(
            s,
            " {:<36}{:<26}{:>14}{:>14}{:>14}",
            format!("{} ({})", l.name, l.keras_type()),
            shape,
            thousands(l.params() as u64),
            flops(l.flops()),
            bytes(act_bytes(l))
        );
    }
    let _ = writeln!(s, "{}", rule('='));
    let params: u64 = layers.iter().map(|l| l.params() as u64).sum();
    let total_flops: u64 = layers.iter().map(LayerSpec::flops).sum();
    let largest = layers.iter().map(act_bytes).max().unwrap_or(0);
    let peak = layers
        .windows(2)
        .map(|w| act_bytes(&w[0]) + act_bytes(&w[1]))
        .max()
        .unwrap_or(largest);
    let all: u64 = layers.iter().map(act_bytes).sum();
    let mb = |p: u64| format!("{:.2} MB", (p * 4) as f64 / (1024.0 * 1024.0));
    let _ = writeln!(s, "Total params: {} ({})", thousands(params), mb(params));
    let _ = writeln!(
        s,
        "Trainable params: {} ({})",
        thousands(params),
        mb(params)
    );
    let _ = writeln!(s, "Non-trainable params: 0 (0.00 B)");
    let _ = writeln!(
        s,
        "FLOPs per image: {} (a multiply-add counts 2)",
        flops(total_flops).trim()
    );
    let _ = writeln!(
        s,
        "Activation memory per image (f32): largest output {}, inference peak (one layer's input \
         + output) {}, all outputs {}",
        bytes(largest),
        bytes(peak),
        bytes(all)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Arch;

    #[test]
    fn vgg16_table_has_keras_rows_and_totals() {
        let t = summary_table(&VggConfig::new(Arch::Vgg16));
        assert!(t.contains(" block1_conv1 (Conv2D)"), "{t}");
        assert!(t.contains("(None, 224, 224, 64)"), "{t}");
        assert!(t.contains("(None, 25088)"), "{t}");
        assert!(t.contains("Total params: 138,357,544 (527.79 MB)"), "{t}");
        assert!(t.contains("FLOPs per image: 30.94 G"), "{t}");
        assert_eq!(thousands(1792), "1,792");
        assert_eq!(thousands(999), "999");
        assert_eq!(bytes(12_845_056), "12.25 MiB");
    }
}
