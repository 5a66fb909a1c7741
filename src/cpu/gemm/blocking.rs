//! Cache blocking (MC, KC, NC) derived from the machine. (Stub: being written.)
