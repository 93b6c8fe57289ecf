//! Lethe key vault (see issue 3).
