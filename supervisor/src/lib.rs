//! supd as a library: the daemon's services and the stores behind them.
