//! Everything that touches the kernel: the embedded program, the pin
//! directory, the pinned maps, attaching and detaching.

pub mod attach;
pub mod clock;
pub mod link_info;
pub mod maps;
pub mod object;
pub mod pins;
pub mod privilege;

pub use attach::{attach, detach, AttachMode, AttachReport, AttachRequest};
pub use maps::{GateMaps, GrantEntry};
pub use pins::PinDir;
