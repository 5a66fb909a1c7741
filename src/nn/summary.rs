//! A `model.summary()`-style table, with what Keras leaves out: FLOPs and activation memory.

use std::fmt::Write;

use super::arch::{LayerKind, LayerSpec, VggConfig};

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

/// Each layer's receptive field: the side of the input square one of its output positions
/// sees (`None` once a layer sees the whole image: flatten, dense, global pooling). A 3x3
/// convolution widens it by 2 input steps, a 2x2 pool by 1 and doubles the step: VGG's
/// argument for stacking small kernels, which block5_conv3 takes to 196 pixels.
pub fn receptive_fields(layers: &[LayerSpec]) -> Vec<Option<usize>> {
    let (mut field, mut step) = (Some(1usize), 1usize);
    layers
        .iter()
        .map(|l| {
            field = match (l.kind, field) {
                (LayerKind::Conv2d { .. }, Some(f)) => Some(f + 2 * step),
                (LayerKind::MaxPool, Some(f)) => {
                    let f = f + step;
                    step *= 2;
                    Some(f)
                }
                (LayerKind::Input, f) => f,
                _ => None,
            };
            field
        })
        .collect()
}

/// The table for `config`, per image (batch dimension shown as `None`, as Keras does).
pub fn summary_table(config: &VggConfig) -> String {
    let layers = config.layers();
    let fields = receptive_fields(&layers);
    let rule = |c: char| c.to_string().repeat(118);
    let mut s = String::new();
    let _ = writeln!(s, "Model: \"{}\"", config.model_name());
    let _ = writeln!(s, "{}", rule('_'));
    let _ = writeln!(
        s,
        " {:<36}{:<26}{:>14}{:>14}{:>14}{:>14}",
        "Layer (type)", "Output Shape", "Param #", "FLOPs", "Activation", "Receptive"
    );
    let _ = writeln!(s, "{}", rule('='));
    let act_bytes = |l: &LayerSpec| 4 * l.output.numel() as u64;
    for (l, field) in layers.iter().zip(&fields) {
        let dims: Vec<String> = l.output.dims().iter().map(usize::to_string).collect();
        let shape = format!("(None, {})", dims.join(", "));
        let field = field.map_or("image".to_string(), |f| format!("{f}x{f}"));
        let _ = writeln!(
            s,
            " {:<36}{:<26}{:>14}{:>14}{:>14}{:>14}",
            format!("{} ({})", l.name, l.keras_type()),
            shape,
            thousands(l.params() as u64),
            flops(l.flops()),
            bytes(act_bytes(l)),
            field
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

    /// VGG16's receptive fields, by hand: 3, 5 in block 1, 6 after its pool, +4 per conv in
    /// block 2, ... 196 at block5_conv3 and 212 after block5_pool.
    #[test]
    fn receptive_fields_grow_as_vgg_says() {
        let layers = VggConfig::new(Arch::Vgg16).layers();
        let fields = receptive_fields(&layers);
        let at = |name: &str| fields[layers.iter().position(|l| l.name == name).unwrap()];
        assert_eq!(at("block1_conv1"), Some(3));
        assert_eq!(at("block1_conv2"), Some(5));
        assert_eq!(at("block1_pool"), Some(6));
        assert_eq!(at("block2_conv2"), Some(14));
        assert_eq!(at("block5_conv3"), Some(196));
        assert_eq!(at("block5_pool"), Some(212));
        assert_eq!(at("fc1"), None);
        let t = summary_table(&VggConfig::new(Arch::Vgg16));
        assert!(t.contains("196x196") && t.contains("image"), "{t}");
    }
}
