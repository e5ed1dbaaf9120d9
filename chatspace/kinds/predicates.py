"""A SQL predicate over a table's columns (DuckDB, no file access), as `--where` takes it:
which generations a judge run judges, which judged generations a vectors run reads."""

from __future__ import annotations

import pyarrow as pa

from chatspace.errors import BadInput


def kept(table: pa.Table, where: str | None, what: str = "source.where (--where)") -> pa.Table:
    """The rows of `table` for which the SQL predicate `where` holds (all when None), in their
    order; BadInput when it is not a boolean expression over the table's columns."""
    if where is None:
        return table
    import duckdb

    con = duckdb.connect()
    con.execute("SET enable_external_access = false")
    con.register("results", table.append_column("_order", pa.array(range(table.num_rows))))
    try:
        described = con.execute(f"DESCRIBE SELECT ({where}) AS keep FROM results").fetchall()
        if described[0][1] != "BOOLEAN":
            raise BadInput(f"{what} {where!r} is not a boolean expression (it gives "
                           f"{described[0][1]})")
        out = con.sql(f"SELECT * EXCLUDE (_order) FROM results WHERE ({where}) "
                      "ORDER BY _order").to_arrow_table()
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise BadInput(f"{what} {where!r}: {first}") from None
    finally:
        con.close()
    return out
