"""The package's version, in a module of its own: every room may read it without importing the
package root (which imports the SDK), so no import cycle can form around it."""

__version__ = "0.1.0"
