//! Activation maps of one layer as a labelled grid (`keel visualize maps`).
