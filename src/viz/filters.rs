//! A layer's filters as pictures (`keel visualize filters`).
