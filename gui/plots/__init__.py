"""Pure plotly figure builders for the GUI pages: plain data in, go.Figure out, no Streamlit, no engine calls."""
