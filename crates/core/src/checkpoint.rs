//! checkpoint placeholder
