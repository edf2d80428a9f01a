//! Everything that touches the kernel: the embedded program, the pin
//! directory, the pinned maps, attaching and detaching.

pub mod attach;
pub mod bpf_asm;
pub mod bpffs;
pub mod clock;
pub mod held;
pub mod iface;
pub mod layout;
pub mod link_fd;
pub mod link_state;
pub mod local_addrs;
pub mod maps;
pub mod mode;
pub mod object;
pub mod pins;
pub mod privilege;
pub mod settings;
mod swap;
pub mod upgrade;

pub use attach::{attach, attach_holding, detach, AttachReport, AttachRequest, Attachment};
pub use maps::{GateMaps, GrantEntry};
pub use mode::AttachMode;
pub use pins::PinDir;
