"""Looking at results: the runs under a root as DuckDB views, HTML reports and the
Streamlit app."""
