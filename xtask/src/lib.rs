//! What `cargo xtask` shares with the tests: running commands, and
//! building the Debian package (gate-tests' deb_package test builds it
//! with the same code as `cargo xtask deb`).

pub mod cmd;
pub mod deb;
