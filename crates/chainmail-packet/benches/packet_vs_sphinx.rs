//! Packet benchmark against sphinx-packet (being written).
fn main() {}
