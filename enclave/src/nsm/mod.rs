//! NSM (being written)
