//! HTTP/1.x streaming parser (being written).
