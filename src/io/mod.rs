pub mod atomic;
pub mod npy;
