//! /proc parsers (being written).
