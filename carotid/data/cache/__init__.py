"""The decoded-frame cache: `dataset` (its entry point and guarantees), `build` and `index`."""
