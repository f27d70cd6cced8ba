//! Integration tests of the image format (one test binary).

mod common;
mod corrupt;
mod fuzz;
mod golden;
mod roundtrip;
