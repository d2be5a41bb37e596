import marimo

__generated_with = "0.9.14"
app = marimo.App(width="medium")


@app.cell
def __():
    import marimo as mo
    mo.md("# Temperature conversions")
    return (mo,)


@app.function
def c_to_f(c):
    return c * 9 / 5 + 32


@app.function
def f_to_c(f):
    return (f - 32) * 5 / 9


@app.function
def describe(c):
    if c <= 0:
        return "freezing"
    if c < 15:
        return "cold"
    if c < 25:
        return "mild"
    return "hot"


@app.cell
def __(mo):
    mo.md(f"100 °C is {c_to_f(100)} °F")
    return


if __name__ == "__main__":
    app.run()
