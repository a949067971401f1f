"""Data sets by name -> train, validation and test splits; image folders; transforms; the resident path (decoded
once, cached, on the device); loaders; the embedded shapes set."""
