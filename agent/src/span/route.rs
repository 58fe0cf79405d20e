//! Low-cardinality routes (being written).
