//! weir's one integration test binary: each module tests one part of weir over its real interfaces.

mod emulator;
