"""Application integration: prompt apps over the served model, and the code sandbox they run programs in
(``sandbox``)."""
