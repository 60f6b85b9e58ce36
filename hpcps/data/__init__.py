"""Splitting each epoch's samples across workers."""
