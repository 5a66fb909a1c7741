//! A layer's parameters, and the slot where a backend keeps what it derives from them.

use std::any::Any;
use std::sync::OnceLock;

use super::Tensor;

/// A slot where a backend keeps what it derives from one layer's weights (Winograd transforms,
/// the flipped kernel of the input gradient, device copies), so that the work is done once per
/// set of weights rather than once per call. The layer owns the slot; the backend decides what
/// goes in it. A slot filled by another backend holds a type this one does not recognise, and
/// is then ignored.
#[derive(Default)]
pub struct LayerCache(OnceLock<Box<dyn Any + Send + Sync>>);

impl LayerCache {
    /// The cached value of type `T`, made by `init` if the slot is empty; None if the slot
    /// holds another type.
    pub fn get_or_init<T: Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> Option<&T> {
        self.0.get_or_init(|| Box::new(init())).downcast_ref()
    }

    /// Empty the slot: what it held was derived from weights that have changed.
    pub fn clear(&mut self) {
        self.0 = OnceLock::new();
    }

    pub fn is_filled(&self) -> bool {
        self.0.get().is_some()
    }
}

impl Clone for LayerCache {
    /// A clone starts empty: the cache is derived data, cheap to rebuild, and may be large.
    fn clone(&self) -> Self {
        LayerCache::default()
    }
}

impl std::fmt::Debug for LayerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_filled() {
            "LayerCache(filled)"
        } else {
            "LayerCache(empty)"
        })
    }
}

/// The weights of a convolution or dense layer (Keras's layouts: conv `(kH, kW, Cin, Cout)`,
/// dense `(in, out)`) with the backend's cache of what it derives from them.
///
/// The weights can change (fine-tuning), and a cache derived from old weights would silently
/// compute with them: so the only mutable access, [`LayerParams::tensors_mut`], empties the
/// cache first. Invalidation cannot be forgotten because it is not a separate call.
#[derive(Clone, Debug)]
pub struct LayerParams {
    kernel: Tensor,
    bias: Option<Tensor>,
    cache: LayerCache,
}

impl LayerParams {
    pub fn new(kernel: Tensor, bias: Option<Tensor>) -> LayerParams {
        LayerParams {
            kernel,
            bias,
            cache: LayerCache::default(),
        }
    }

    pub fn kernel(&self) -> &Tensor {
        &self.kernel
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// What the backend derived from these weights.
    pub fn cache(&self) -> &LayerCache {
        &self.cache
    }

    /// The kernel and bias, to change them: the cache is emptied first.
    pub fn tensors_mut(&mut self) -> (&mut Tensor, Option<&mut Tensor>) {
        self.cache.clear();
        (&mut self.kernel, self.bias.as_mut())
    }

    /// The kernel and bias, giving up the cache.
    pub fn into_tensors(self) -> (Tensor, Option<Tensor>) {
        (self.kernel, self.bias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutable_access_empties_the_cache() {
        let k = Tensor::from_vec([1, 2], &[1.0, 2.0]).unwrap();
        let mut p = LayerParams::new(k, None);
        assert_eq!(p.cache().get_or_init(|| 7u8), Some(&7));
        assert!(p.cache().is_filled());
        assert_eq!(
            p.cache().get_or_init(|| 1u16),
            None,
            "another type is ignored"
        );
        let (k, b) = p.tensors_mut();
        k.data_mut()[0] = 5.0;
        assert!(b.is_none());
        assert!(!p.cache().is_filled());
        assert_eq!(p.cache().get_or_init(|| 9u8), Some(&9));
        assert!(!p.clone().cache().is_filled(), "clones start empty");
    }
}
