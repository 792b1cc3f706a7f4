"""Tests of components.losses."""
