//! What this CPU is: vendor, model, caches, cores and instruction sets, read at run time.
//! (Stub: being written.)
