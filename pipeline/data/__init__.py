"""Data preparation: sources -> unified instruction records -> fixed, checked splits on disk
(`slm prepare`), and the checked load of them (`prepared.load_prepared`) that later stages use."""
