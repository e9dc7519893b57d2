//! The NumPack store: directories NumPack 0.7 wrote, deletion bitmaps, changes killed or
//! failing at every call, readers beside writers, data files going missing after opening.

#[path = "../common/mod.rs"]
mod common;

mod atomicity;
mod bitmap;
mod consistency;
mod numpack_fixtures;
mod open_deferred;
