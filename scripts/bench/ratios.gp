# gnuplot script for bench-results/ratios.png, run by scripts/bench.sh as
#   gnuplot -e "datafile='…/ratios.dat'; outfile='…/ratios.png'; workers='1 2'; title_text='…'" ratios.gp
# ratios.dat columns: label, then per worker count: throughput ratio, CPU-per-request ratio.
set terminal pngcairo size 1200,900 font "sans,10"
set output outfile
set datafile missing "-"
set style data histograms
set style histogram cluster gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key top right
set xtics rotate by -20 scale 0
set yrange [0:*]
set multiplot layout 2,1 title title_text

set title "Throughput: keepring ÷ nginx (req/s medians); PUT cases: keepring MB/s per worker ÷ single-core MD5 rate (higher is better)"
plot for [i=1:words(workers)] datafile using (column(2*i)):xtic(1) title "--workers ".word(workers, i), \
     1 with lines dashtype 2 lc rgb "black" notitle

set title "Server CPU per request: keepring ÷ nginx (lower is better)"
plot for [i=1:words(workers)] datafile using (column(2*i+1)):xtic(1) title "--workers ".word(workers, i), \
     1 with lines dashtype 2 lc rgb "black" notitle

unset multiplot
