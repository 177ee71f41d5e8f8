# gnuplot script for bench-results/ratios.png, run by scripts/bench.sh as
#   gnuplot -e "dir='CHART_DIR'; outfile='…/ratios.png'; workers='1 2'; title_text='…'" ratios.gp
# CHART_DIR/throughput.dat and cpu.dat (from report.py): a label, then one ratio per worker count.
set terminal pngcairo size 1200,900 font "sans,10"
set output outfile
set datafile missing "-"
set style data histograms
set style histogram cluster gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key top right
set xtics rotate by -15 scale 0
n = words(workers)
# x of bar i (1-based) in cluster $0 for a clustered histogram with gap 1
barx(i) = $0 - 1.0 / (n + 1) * ((n - 1) / 2.0 - (i - 1))
set multiplot layout 2,1 title title_text

set title "Throughput: keepring ÷ nginx (req/s medians); PUT cases: keepring MB/s per worker ÷ single-core MD5 rate (higher is better)"
set xrange [-0.6:*]
set yrange [0:*]
plot for [i=1:n] dir."/throughput.dat" using (column(i+1)):xtic(1) title "--workers ".word(workers, i), \
     for [i=1:n] dir."/throughput.dat" using (barx(i)):(column(i+1)):(sprintf("%.2f", column(i+1))) \
         with labels offset 0,0.6 font ",8" notitle, \
     1 with lines dashtype 2 lc rgb "black" notitle

set title "Server CPU per request: keepring ÷ nginx (log scale, lower is better)"
set logscale y
set yrange [0.1:100]
plot for [i=1:n] dir."/cpu.dat" using (column(i+1)):xtic(1) title "--workers ".word(workers, i), \
     for [i=1:n] dir."/cpu.dat" using (barx(i)):(column(i+1)):(sprintf("%.2f", column(i+1))) \
         with labels offset 0,0.6 font ",8" notitle, \
     1 with lines dashtype 2 lc rgb "black" notitle

unset multiplot
