"""BN beyond one device: synchronized statistics across devices (`sync`) and processes (`dist`)."""
