//! Image references, parsed and normalized as Docker does.
