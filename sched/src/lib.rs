//! fleet's pure core: the unit model ([X-Fleet] requirements), placement and reconcile.
