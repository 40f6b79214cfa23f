"""celeriac's built-in plugins; each sub-package is independent and uses only the kernel's public API."""
