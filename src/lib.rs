pub use teleport_core as core;
