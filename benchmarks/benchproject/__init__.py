"""A minimal Django project that serves one small realistic view, for benchmarks only."""
